"""The recovery budget: a job's best verified candidates fine-tuned alone (``finetune_steps``), each
kept only where it scores at least as well and still times within the budget, then the one to hand
out chosen again on validation (``selection``) and copied to the job's ``model.onnx``."""

from __future__ import annotations

import torch

from nasprune.data import preprocessing_metadata
from nasprune.evaluate import accuracy_of, per_example_of
from nasprune.export import export_model, read_metadata, stamp_metadata
from nasprune.finetune import finetune_subnet
from nasprune.latency.timing import feed_for, make_session, time_interleaved
from nasprune.paths import FINETUNED, JobFiles
from nasprune.quantize import DEFAULT_CALIBRATION, calibration_inputs, quantize_model, split_accuracy
from nasprune.search.job import Candidate, SearchJob
from nasprune.search.select import mcnemar_worse
from nasprune.train import default_recipe


def quantization_aware(rec: Candidate, job: SearchJob) -> bool:
    """Whether fine-tuning the recommended candidate simulates int8 (:class:`nasprune.finetune.Int8Simulation`):
    only for an int8 candidate that lost more than ``qat_min_drop`` of validation accuracy to quantization.
    Every other candidate, int8 included, is fine-tuned in float (an int8 one is then quantized again)."""
    if rec.precision != "int8" or job.qat_min_drop is None or rec.fp32_accuracy is None:
        return False
    return rec.fp32_accuracy - rec.accuracy > job.qat_min_drop


def finetune_candidate(
    rec: Candidate, job: SearchJob, supernet, evaluator, files: JobFiles, steps: int
) -> torch.Tensor | None:
    """Fine-tune one verified candidate alone for ``steps`` optimiser steps (:mod:`nasprune.finetune`),
    score it on the validation split the search used, and keep the fine-tuned file beside the inherited
    one when it scores at least as well (``rec.delivered`` says which of the two :func:`pick_delivered` would
    hand out; ``rec.accuracy`` and ``rec.test_accuracy`` are that file's). Its ONNX (exported, checked)
    is timed against the verified inherited model in interleaved rounds (same architecture: the ratio of
    the two is the check). An int8 candidate is quantized again after fine-tuning, as the search
    quantized it (its ``calibration``), and scored as int8 with onnxruntime; it is fine-tuned
    quantization-aware when quantizing had cost it more than ``qat_min_drop``. Returns the delivered
    weights' per-image correctness on the validation split (None for int8), for :func:`pick_delivered`."""
    int8, qat = rec.precision == "int8", quantization_aware(rec, job)
    space = supernet.space
    cfg = space.parse_config(rec.config)

    def kept_inherited() -> torch.Tensor | None:  # the inherited weights stay: their per-image results
        return None if int8 else evaluator.per_example(cfg, "val").correct

    recipe = default_recipe(space)
    ds = evaluator.dataset
    res = finetune_subnet(supernet, cfg, ds, steps=steps, seconds=job.finetune_seconds,
                          batch_size=recipe.batch_size, max_shift=recipe.max_shift, seed=job.seed,
                          fake_quant=qat)  # fmt: skip
    inherited = files.candidate(rec.candidate_id)
    meta = {k.removeprefix("nasprune."): v for k, v in read_metadata(inherited).items()}
    meta.update(preprocessing_metadata(ds))
    path = files.candidate(rec.candidate_id, FINETUNED)
    if int8:
        flt = path.with_name(f"{rec.candidate_id}.finetuned.fp32.onnx")
        export_model(res.model, tuple(space.input_shape), flt, meta, input_kind=space.input_kind)
        quantize_model(flt, path, calibration_inputs(ds), rec.calibration or DEFAULT_CALIBRATION)
        flt.unlink()
        rec.finetuned_accuracy = split_accuracy(path, ds, "val")
        rec.finetuned_test_accuracy = split_accuracy(path, ds, "test")
    else:
        xv, yv = ds.tensors("val")
        xt, yt = ds.tensors("test")
        tuned_correct = per_example_of(res.model, xv, yv).correct
        rec.finetuned_accuracy = float(tuned_correct.float().mean())
        rec.finetuned_test_accuracy = accuracy_of(res.model, xt, yt)
    rec.inherited_accuracy, rec.inherited_test_accuracy = rec.accuracy, rec.test_accuracy
    rec.finetune_steps = res.steps
    if rec.finetuned_accuracy < rec.accuracy:
        rec.delivered = "inherited"
        path.unlink(missing_ok=True)
        stamp_metadata(inherited, {"delivered": "inherited", "finetuned_accuracy": rec.finetuned_accuracy,
                                   "finetune_steps": res.steps})  # fmt: skip
        return kept_inherited()
    finetuned = {
        "delivered": "fine-tuned", "inherited_accuracy": rec.accuracy, "accuracy": rec.finetuned_accuracy,
        "test_accuracy": rec.finetuned_test_accuracy, "finetune_steps": res.steps,
        "finetune_epochs": round(res.epochs_done, 3), "finetune_seconds": round(res.seconds, 1),
        "finetune_recipe": res.recipe,
    }  # fmt: skip
    if int8:
        finetuned["finetune"] = ("quantization-aware (int8 weights per channel and uint8 inputs simulated), then "
                                 "quantized" if qat else "in float, then quantized again")  # fmt: skip
        stamp_metadata(path, finetuned)
    else:
        export_model(res.model, tuple(space.input_shape), path, {**meta, **finetuned}, input_kind=space.input_kind)
    if rec.measured_latency_ms is not None:  # re-verify: the same architecture must time the same
        sessions = [make_session(p) for p in (inherited, path)]
        t_inh, t_ft = time_interleaved(sessions, [feed_for(x) for x in sessions], rounds=20, burst=5, warmup=10)
        ratio = t_ft.median_ms / t_inh.median_ms
        ms = rec.measured_latency_ms * ratio
        if ms > job.latency_budget_ms:  # timing noise on a model at the budget's edge: keep the verified one
            rec.delivered = "inherited"
            stamp_metadata(inherited, {"delivered": "inherited", "finetuned_accuracy": rec.finetuned_accuracy,
                                       "finetuned_over_budget_ms": ms})  # fmt: skip
            return kept_inherited()
        raw = float(meta["measured_raw_ms"]) * ratio if "measured_raw_ms" in meta else None
        stamp_metadata(path, {"measured_latency_ms": ms, "verified": True,
                              **({"measured_raw_ms": raw} if raw is not None else {})})  # fmt: skip
        rec.measured_latency_ms = ms
    rec.delivered = "fine-tuned"
    rec.accuracy, rec.test_accuracy = rec.finetuned_accuracy, rec.finetuned_test_accuracy
    return None if int8 else tuned_correct


def pick_delivered(
    tuned: list[Candidate],
    files: JobFiles,
    rule: str = "accuracy",
    correct: dict[str, torch.Tensor | None] | None = None,
) -> Candidate:
    """Of the fine-tuned candidates, the one to hand out, copied to ``model.onnx`` (its metadata says how
    the others scored). By default (``largest-tied``) the slowest of those that validation cannot show to
    be worse than the most accurate (paired, McNemar's exact test at 5% on the validation images, as the
    search ranks its candidates): the job uses its budget unless a smaller model is shown to be better.
    Otherwise, or without per-image results (int8), the most accurate (the slower of equals)."""
    def ms(c: Candidate) -> float:
        return c.measured_latency_ms or c.latency_ms

    best = max(tuned, key=lambda c: (c.accuracy, ms(c)))
    per_image = correct or {}
    if rule == "largest-tied" and all(per_image.get(c.candidate_id) is not None for c in tuned):
        ref = per_image[best.candidate_id]
        tied = [c for c in tuned if c is best or mcnemar_worse(per_image[c.candidate_id], ref) >= 0.05]
        best = max(tied, key=lambda c: (ms(c), c.accuracy))
    src = files.candidate(best.candidate_id, FINETUNED if best.delivered == "fine-tuned" else ".onnx")
    files.model.write_bytes(src.read_bytes())
    others = {c.candidate_id: c.accuracy for c in tuned if c is not best}
    stamp_metadata(files.model, {"finetuned_candidates": len(tuned), "finetune_others_accuracy": others})
    return best
