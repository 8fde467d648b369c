"""``run_job``: one search job from a request to a verified, exported recommendation.

1. get the device's latency table (built once, cached in the data dir) and refuse a budget below the
   fastest subnet's predicted latency, saying what is achievable, before anything is trained;
2. tier 0 (``job.tier0``): where the space names trained weights, prune them to the budget without
   training (:mod:`nasprune.search.tier0.job`), the job's first result; then get the trained supernet;
3. run the backend (Optuna or Ray Tune) until the durable study holds ``n_trials`` trials;
4. take the feasible Pareto front, export the most accurate candidates to ONNX and *measure* them
   on the device ("measure before you promise"); the recommendation is the most accurate one whose
   measured latency is within budget; fine-tune the best few; deliver the more accurate usable model
   of the search's and tier 0's;
5. record everything in MLflow (parent run, child run per trial, front, plot, model) when a
   tracking URI is given, and write ``pareto.json``, ``pareto.png`` and ``model.onnx``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from nasprune.data import load_dataset, preprocessing_metadata
from nasprune.errors import BudgetError, ConfigError, LatencyTableError
from nasprune.evaluate import Evaluator
from nasprune.export import export_subnet, stamp_metadata
from nasprune.latency.profile import check_runs_here
from nasprune.latency.store import get_table
from nasprune.paths import JobFiles, job_files
from nasprune.search import precision, refine
from nasprune.search.backends import BACKENDS
from nasprune.search.job import Candidate, JobContext, Progress, SearchJob, SearchResult, TrainingProgress
from nasprune.search.objective import Objective
from nasprune.search.plot import pareto_plot
from nasprune.search.precision import deliver, per_example
from nasprune.search.recover import finetune_candidate, pick_delivered, quantization_aware
from nasprune.search.resolve import resolve
from nasprune.search.select import rank
from nasprune.search.study import TrialRecord, open_study, pareto_trials, record_of, trial_records
from nasprune.search.tier0 import job as tier0_job
from nasprune.search.tier0.job import best_of_tiers
from nasprune.search.verify import (
    VerifySettings,
    distrust,
    load_avg,
    machine_speed,
    reference_subnets,
    time_rounds,
    too_few_rounds,
)
from nasprune.tracking import JobTracker, MlflowTracker, job_run_name
from nasprune.train import checkpoint_id, default_recipe, get_supernet

log = logging.getLogger(__name__)


def check_budget(job: SearchJob, *tables) -> float:
    """The fastest achievable predicted latency over the ``tables`` of the job's precisions (an int8
    subnet may run below the fastest fp32 one); raises :class:`BudgetError` if the budget is below it."""
    fastest = min(t.min_latency() for t in tables)
    if job.latency_budget_ms < fastest:
        held = " or ".join(dict.fromkeys(t.precision for t in tables))
        raise BudgetError(
            f"latency budget {job.latency_budget_ms:g} ms is below the fastest subnet of '{job.space}' on "
            f"'{job.device}' ({fastest:.4f} ms predicted at {held}); the smallest achievable budget is "
            f"{fastest:.4f} ms (budgets from {fastest:.4f} to {max(t.max_latency() for t in tables):.4f} ms trade "
            "accuracy for latency)"
        )
    return fastest


def run_job(
    job: SearchJob, ctx: JobContext, progress_bar: bool = False, verify: VerifySettings | None = None
) -> SearchResult:
    """Run (or resume) the job ``ctx.job_id`` to the end and return its result (``verify``: how to time candidates)."""
    resolved = resolve(job, ctx)  # the space parsed once; the output folder laid out
    space, table_space, files = resolved.space, resolved.spaces.table_space, resolved.files
    if job.tier0 == "only":  # refused before a table is measured for nothing
        source, why = tier0_job.source_of(job, space, ctx.data_dir)
        if source is None:
            raise ConfigError(why)
    ctx.on_progress(
        Progress(
            stage="building latency table",
            n_total=job.n_trials,
            message=f"latency table for '{job.device}' (measured once if needed)",
        )
    )
    table = get_table(table_space, job.device, data_dir=ctx.data_dir, progress=progress_bar)
    table8 = None
    if "int8" in job.precisions:  # built (or loaded) before the search: its floor counts for the budget
        table8 = get_table(table_space, job.device, data_dir=ctx.data_dir, progress=progress_bar, precision="int8")
    # before the supernet: a budget no subnet can meet is refused without training anything
    check_budget(job, *(t for t in (table, table8) if t is not None))
    tracking = _start_tracking(job, ctx, table)
    try:
        tier0 = _tier0(job, space, table, ctx, files, verify, tracking)
        if job.tier0 == "only":
            return _tier0_only(job, ctx, tier0, table, tracking, files)
        return _search(job, ctx, space, table, table8, tier0, tracking, files, progress_bar, verify)
    except BaseException:
        if tracking and not tracking.closed:
            tracking.close("FAILED")  # the job's run must not stay RUNNING after the job failed
        raise


def _tier0(job: SearchJob, space, table, ctx: JobContext, files: JobFiles, verify, tracking):
    """The job's tier-0 model (:mod:`nasprune.search.tier0.job`), or None where the job makes none."""
    source, why = tier0_job.source_of(job, space, ctx.data_dir)
    if source is None:
        if job.tier0 == "only":
            raise ConfigError(why)
        return None

    def note(msg: str) -> None:
        ctx.on_progress(Progress(stage="tier 0", n_total=job.n_trials, message=f"tier 0: {msg}"))

    fresh = not files.tier0.is_file()
    cand = tier0_job.run(job, space, table, load_dataset(space.dataset, data_dir=ctx.data_dir), files, ctx.data_dir,
                         verify=verify, on_progress=note)  # fmt: skip
    if tracking and fresh:
        tracking.log_tier0(cand, files.candidate(cand.candidate_id))
    ms = f"measured {cand.measured_latency_ms:.4g} ms" if cand.measured_latency_ms is not None else "not measured"
    ctx.on_progress(
        Progress(
            stage="tier 0",
            n_total=job.n_trials,
            best_accuracy=cand.accuracy if cand.verified else None,
            best_latency_ms=cand.measured_latency_ms if cand.verified else None,
            message=f"tier 0 model ready: validation {cand.accuracy:.2%}, {ms}"
            + (" (verified)" if cand.verified else f" ({cand.unverified_reason})"),
            tier0=cand,
        )
    )
    return cand


def _tier0_only(job: SearchJob, ctx: JobContext, tier0, table, tracking, files: JobFiles) -> SearchResult:
    """A ``tier0: only`` job's result: the tier-0 model delivered, no supernet, no trials."""
    recommended = best_of_tiers(None, tier0, job)
    if recommended is not None:
        files.model.write_bytes(files.candidate(tier0.candidate_id).read_bytes())
    result = SearchResult(
        job=job,
        n_trials=0,
        pareto=[],
        recommended=recommended,
        tier0=tier0,
        table_error=_table_error(table),
        tracking_error=tracking.error if tracking else None,
    )
    _write_outputs(result, [], job, files)
    if tracking:
        _finish_tracking(tracking, result, files, {}, None, [])
        result.tracking_error = tracking.error
    files.result.write_text(result.model_dump_json(indent=2))
    ctx.on_progress(Progress(stage="done", n_total=job.n_trials, best_accuracy=tier0.accuracy,
                             best_latency_ms=tier0.measured_latency_ms, tier0=tier0))  # fmt: skip
    return result


def _search(
    job: SearchJob, ctx: JobContext, space, table, table8, tier0, tracking, files: JobFiles, progress_bar, verify
):
    """Supernet, search, verification, fine-tuning: the rest of :func:`run_job` after tier 0."""
    ctx.on_progress(
        Progress(
            stage="preparing supernet",
            n_total=job.n_trials,
            message="loading the trained supernet (training it once if needed)",
            tier0=tier0,
        )
    )

    def on_epoch(rec: dict) -> None:  # when this job trains the supernet (or resumes its killed training)
        training = TrainingProgress.of(rec)
        ctx.on_progress(
            Progress(
                stage="training supernet",
                n_total=job.n_trials,
                message=training.describe(),
                training=training,
                tier0=tier0,
            )
        )

    def on_note(msg: str) -> None:
        ctx.on_progress(Progress(stage="training supernet", n_total=job.n_trials, message=msg, tier0=tier0))

    train_tracker = None
    if ctx.tracking_uri:
        train_tracker = MlflowTracker(ctx.tracking_uri)  # the training's epochs as MLflow step metrics
    supernet, ckpt = get_supernet(
        space, ctx.data_dir, tracker=train_tracker, progress=progress_bar, on_epoch=on_epoch, notify=on_note,
        epochs=job.train_epochs,
    )  # fmt: skip
    evaluator = Evaluator(supernet, load_dataset(space.dataset, data_dir=ctx.data_dir), checkpoint_id(ckpt))
    objective = Objective(supernet, evaluator, table, job)

    study = open_study(job, ctx.job_id, ctx.storage_url)
    done = {r.number for r in trial_records(study)}
    best: dict[str, float | None] = {"acc": None, "lat": None}
    for r in trial_records(study):
        _update_best(best, r)

    def report(stage: str, message: str = "") -> None:
        ctx.on_progress(
            Progress(
                stage=stage,
                n_done=len(done),
                n_total=job.n_trials,
                best_accuracy=best["acc"],
                best_latency_ms=best["lat"],
                message=message,
                tier0=tier0,
            )
        )

    def on_trial(rec: TrialRecord) -> None:
        done.add(rec.number)
        _update_best(best, rec)
        if tracking:
            tracking.log_trial(rec)
        report("searching")

    report("searching")
    extra: dict = {}

    def sample(upto: SearchJob) -> None:
        nonlocal extra
        extra = BACKENDS[job.backend](objective, upto, ctx, on_trial, checkpoint_id=checkpoint_id(ckpt))

    sample(job.model_copy(update={"n_trials": job.n_trials - job.n_refine()}))  # the rest: refine.run
    if job.n_refine() and not ctx.should_stop():
        report("searching", "growing the best candidates towards the budget")
        refine.run(objective, job, ctx, on_trial)
        if len(done) < job.n_trials and not ctx.should_stop():  # nothing new left to grow: sample the rest
            sample(job)

    study = open_study(job, ctx.job_id, ctx.storage_url)
    trials = trial_records(study)
    if ctx.should_stop() and len(trials) < job.n_trials:
        # cancelled or shutting down: the trials are kept in storage; verification is for finished jobs
        if tracking:
            tracking.close("KILLED")
        return SearchResult(
            job=job,
            n_trials=len(trials),
            pareto=[],
            recommended=None,
            tier0=tier0,
            table_error=_table_error(table),
            tracking_error=tracking.error if tracking else None,
        )
    report("verifying", "exporting and measuring the best candidates")
    unique: dict[str, TrialRecord] = {}
    for t in pareto_trials(study):  # a seeded config may also be drawn by the sampler: one entry each
        unique.setdefault(t.user_attrs["subnet_key"], record_of(t))
    front = list(unique.values())
    scorer = None
    if "int8" in job.precisions:  # int8 candidates that can reach the front (nasprune.search.precision)

        report("verifying", "quantizing the int8 candidates that can reach the front")
        scorer = precision.Int8Scorer(supernet, evaluator, files.int8)
        front = precision.expand_front(front, trials, job, table8, scorer)
    candidates, recommended, eligible = _verify(front, job, supernet, evaluator, table, files, verify)
    if scorer is not None:
        precision.finish(candidates, scorer)
    steps = job.finetune_plan(len(evaluator.dataset.tensors("train")[1]), default_recipe(space).batch_size)
    if recommended is not None and steps > 0 and not ctx.should_stop():
        tuned = eligible[: job.finetune_top_k]
        correct: dict[str, torch.Tensor | None] = {}
        for i, rec in enumerate(tuned, 1):
            how = "quantization-aware, " if quantization_aware(rec, job) else ""
            report("verifying", f"fine-tuning candidate {i}/{len(tuned)} ({how}{steps} steps)")
            correct[rec.candidate_id] = finetune_candidate(rec, job, supernet, evaluator, files, steps)
        recommended = pick_delivered(tuned, files, job.selection, correct)

    delivered = best_of_tiers(recommended, tier0, job)
    if delivered is not None and delivered is tier0:  # tier 0 scored better: it is what the job hands out
        files.model.write_bytes(files.candidate(tier0.candidate_id).read_bytes())
    recommended = delivered
    if tracking:
        for rec in trials:
            if rec.number not in tracking.children:
                tracking.log_trial(rec)  # a trial finished before a crash but never reached MLflow
    result = SearchResult(
        job=job,
        n_trials=len(trials),
        pareto=candidates,
        recommended=recommended,
        tier0=tier0,
        table_error=_table_error(table),
        tracking_error=tracking.error if tracking else None,
    )
    _write_outputs(result, trials, job, files)
    if tracking:
        _finish_tracking(tracking, result, files, extra, evaluator.dataset, trials)
        result.tracking_error = tracking.error
    files.result.write_text(result.model_dump_json(indent=2))
    ctx.on_progress(
        Progress(
            stage="done",
            n_done=len(trials),
            n_total=job.n_trials,
            best_accuracy=best["acc"],
            best_latency_ms=best["lat"],
            tier0=tier0,
        )
    )
    return result


def _update_best(best: dict, rec: TrialRecord) -> None:
    if rec.feasible and (best["acc"] is None or rec.accuracy > best["acc"]):
        best["acc"], best["lat"] = rec.accuracy, rec.latency_ms


def _table_error(table) -> dict | None:
    err = getattr(table, "error", None)
    if err is None:
        return None
    return err.model_dump() if hasattr(err, "model_dump") else dict(err)


@dataclass
class _Measured:
    latency_ms: float | None  # at the table's machine speed; None when not trusted
    speed: float
    spread: float
    load_avg: list[float] | None
    unverified_reason: str | None


def _verify(
    front: list[TrialRecord],
    job: SearchJob,
    supernet,
    evaluator,
    table,
    files: JobFiles,
    settings: VerifySettings | None = None,
):
    """Export and measure front candidates, ``verify_top_k`` at a time, until one of them is within
    budget (or the front runs out). The order is :func:`nasprune.search.select.rank`'s under the job's
    ``selection`` rule: by default the candidates within the predicted budget that are not
    significantly less accurate than the most accurate one (paired, on the same validation images)
    come first, lowest validation loss first; each candidate carries its accuracy's uncertainty.

    Each batch is timed in interleaved rounds (:func:`time_rounds`); a model's latency is the
    minimum of its per-round medians, which a busy machine inflates least. The machine's speed
    drifts (a shared VM ran the same subnets 17-30% slower minutes after their table was validated,
    on a quiet machine): up to three of the table's held-out subnets are timed in the same rounds,
    and the candidates' times are divided by the median ratio of their times now to their times
    when the table measured them (:func:`machine_speed`). The load average is kept with each
    measurement. When the rounds disagree too much to be trusted (:func:`distrust`), the most
    accurate such candidate within the *predicted* budget is recommended, marked unverified with
    the reason, instead of no recommendation at all. On a device that is not this machine (an
    uploaded table) nothing can be measured: the most accurate candidate within the predicted
    budget is exported and recommended, unverified.
    """
    settings = settings or VerifySettings()
    try:
        check_runs_here(table.device)
        here = True
    except LatencyTableError as e:
        here = False
        not_here = f"not measured: {e}"
    measured: dict[int, _Measured] = {}
    tested: dict[int, float] = {}
    recommended_number = None
    eligible: list[int] = []  # trial numbers that may be delivered, in selection order (verified ones first)
    references = reference_subnets(table, supernet, files.latency_references) if here else []

    ranked = rank(
        front,
        lambda r: per_example(evaluator, r, files.int8),
        lambda r: r.latency_ms,
        job.latency_budget_ms,
        rule=job.selection,
    )
    selection = {r.number: sel for r, sel in ranked}
    queue = [r for r, _ in ranked]
    while queue and recommended_number is None:
        batch, queue = (queue[: job.verify_top_k], queue[job.verify_top_k :]) if here else (queue[:1], [])
        paths = []
        for rec in batch:
            meta = {
                "accuracy": rec.accuracy,
                "predicted_latency_ms": rec.latency_ms,
                "device": job.device,
                "trial": rec.number,
                **preprocessing_metadata(evaluator.dataset),  # how to feed the model
            }
            cfg = supernet.space.parse_config(rec.config)
            # the model that scored ``rec.accuracy``: extracted, BatchNorm recalibrated
            res = export_subnet(supernet, cfg, files.candidate(rec.subnet_key), meta, model=evaluator.subnet(cfg))
            deliver(res.path, rec, evaluator.dataset)  # int8: quantized in place; precision in the metadata
            paths.append(res.path)
            tested[rec.number] = evaluator.accuracy(cfg, "test")
        if not here:
            recommended_number = batch[0].number
            eligible = [recommended_number]
            stamp_metadata(paths[0], {"verified": False, "unverified_reason": not_here})
            measured[batch[0].number] = _Measured(None, 1.0, 0.0, None, not_here)
            break
        for attempt in range(1, settings.attempts + 1):  # again while the machine is too busy to trust
            load_before = load_avg()
            timings = time_rounds(paths + [p for p, _ in references], table.device, settings, seed=attempt)
            load = load_avg() or load_before
            cand_t, ref_t = timings[: len(paths)], timings[len(paths) :]
            speed = machine_speed([t.best_ms for t in ref_t], [ms for _, ms in references])
            _, reasons = distrust(cand_t, list(zip(ref_t, [ms for _, ms in references], strict=True)), settings)
            if all(why is None for why in reasons) or too_few_rounds(settings):
                break
        if attempt > 1:
            reasons = [f"{why} (in each of {attempt} attempts)" if why else None for why in reasons]
        for rec, path, t, why in zip(batch, paths, cand_t, reasons, strict=True):
            ms = t.best_ms / speed
            measured[rec.number] = _Measured(None if why else ms, speed, t.spread, load, why)
            stamp_metadata(
                path,
                {
                    **({"measured_latency_ms": ms} if why is None else {"unverified_reason": why}),
                    "measured_raw_ms": t.best_ms,
                    "machine_speed": speed,
                    "latency_statistic": f"minimum of {len(t.round_medians)} per-round medians",
                    "latency_spread": round(t.spread, 4),
                    "load_avg": load,
                    "timing_attempts": attempt,
                    "verified": why is None and ms <= job.latency_budget_ms,
                },
            )
        verified = [r for r in batch if measured[r.number].latency_ms is not None
                    and measured[r.number].latency_ms <= job.latency_budget_ms]  # fmt: skip
        untrusted = [r for r in batch if measured[r.number].unverified_reason and r.latency_ms <= job.latency_budget_ms]
        if verified:
            recommended_number = verified[0].number
            eligible = [r.number for r in verified]
        elif untrusted:  # nothing trusted within budget here; timing more of the front would not do better
            recommended_number = untrusted[0].number
            eligible = [recommended_number]
    candidates = []
    for r in front:
        m = measured.get(r.number)
        candidates.append(
            Candidate(
                candidate_id=r.subnet_key,
                trial_number=r.number,
                config=r.config,
                accuracy=r.accuracy,
                latency_ms=r.latency_ms,
                params=r.params,
                macs=r.macs,
                feasible=r.feasible,
                verified=m is not None and m.latency_ms is not None and m.latency_ms <= job.latency_budget_ms,
                measured_latency_ms=m.latency_ms if m else None,
                machine_speed=m.speed if m and m.latency_ms is not None else None,
                test_accuracy=tested.get(r.number),
                unverified_reason=m.unverified_reason if m else None,
                latency_spread=round(m.spread, 4) if m and here else None,
                load_avg=m.load_avg if m else None,
                accuracy_se=round(selection[r.number].se, 6),
                accuracy_ci95=tuple(round(v, 6) for v in selection[r.number].ci95),
                val_loss=round(selection[r.number].loss, 6),
                p_worse_than_best=selection[r.number].p_worse,
                tied_with_best=selection[r.number].tied,
                selection_rank=selection[r.number].rank,
            )
        )
    recommended = next((c for c in candidates if c.trial_number == recommended_number), None)
    if recommended is not None:
        files.model.write_bytes(files.candidate(recommended.candidate_id).read_bytes())
    by_number = {c.trial_number: c for c in candidates}
    return candidates, recommended, [by_number[n] for n in eligible]


def _write_outputs(result: SearchResult, trials: list[TrialRecord], job: SearchJob, files: JobFiles) -> None:
    files.pareto_json.write_text(
        json.dumps(
            {
                "job": job.model_dump(),
                "recommended": result.recommended.model_dump() if result.recommended else None,
                "pareto": [c.model_dump() for c in result.pareto],
                "tier0": result.tier0.model_dump() if result.tier0 else None,
            },
            indent=2,
        )
    )
    if not trials:  # a tier-0 job: no trials to plot
        return
    fp32 = [c for c in result.pareto if c.precision == "fp32"]
    int8 = [c for c in result.pareto if c.precision != "fp32"]
    rec = result.recommended
    t0 = result.tier0
    pareto_plot(
        trials,
        {c.trial_number for c in fp32},
        job.latency_budget_ms,
        rec.trial_number if rec and rec.tier == 1 else None,
        files.pareto_png,
        title=f"{job.space} on {job.device}: {len(trials)} trials ({job.sampler}, {job.backend})",
        intervals={c.trial_number: c.accuracy_ci95 for c in fp32 if c.accuracy_ci95},
        int8=[(c.latency_ms, c.accuracy) for c in int8],
        chosen_point=(rec.latency_ms, rec.accuracy) if rec and rec.precision != "fp32" else None,
        tier0=(t0.latency_ms, t0.accuracy) if t0 else None,
        tier0_chosen=rec is not None and rec.tier == 0,
    )


def _start_tracking(job: SearchJob, ctx: JobContext, table):
    if not ctx.tracking_uri:
        return None

    marker = job_files(ctx.output_dir).run_id
    tracking = JobTracker(
        MlflowTracker(ctx.tracking_uri), f"nasprune/{job.space}", marker=marker, drain_timeout_s=ctx.tracking_drain_s
    )
    existing = marker.read_text().strip() if marker.is_file() else None
    params = {**job.model_dump(mode="json"), "job_id": ctx.job_id}
    err = _table_error(table) or {}
    metrics = {f"table_{k}": v for k, v in err.items() if isinstance(v, int | float)}
    metrics["latency_budget_ms"] = job.latency_budget_ms
    name = job_run_name(job.space, job.latency_budget_ms, job.device, ctx.job_id)
    tracking.start(ctx.job_id, name, params, existing_run_id=existing, metrics=metrics)
    return tracking


def _finish_tracking(tracking, result: SearchResult, files: JobFiles, extra: dict, dataset=None, trials=None) -> None:
    """The front, the summary, the description and the delivered model into MLflow (``JobTracker.finish``)."""
    tags = {}
    if extra.get("nodes"):
        tags["nasprune.ray_nodes"] = json.dumps(extra["nodes"])
        tags["nasprune.ray_node_ids"] = json.dumps(extra.get("node_ids", {}))
    example = None
    if dataset is not None:
        x, _ = dataset.tensors("test")
        example = x[:2].numpy()
    tracking.finish(result, files, input_example=example, extra_tags=tags, trials=trials)
