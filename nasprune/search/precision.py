"""Precision as a search dimension: every candidate is an architecture plus ``fp32`` or ``int8``.

The sampler searches architectures (their fp32 accuracy on the supernet's shared weights and their
predicted latency). After the search, :func:`expand_front` adds int8 candidates:

1. each architecture the search scored gets its int8 predicted latency from the int8 latency table
   (a lookup, no export);
2. it *can reach the front* only if (its fp32 accuracy, its int8 latency) is within budget and not
   dominated by the points known so far (int8 is assumed to score at most its fp32 accuracy);
3. those are quantized (:func:`nasprune.quantize.quantize_model`: static QDQ, U8S8, per-channel,
   calibrated on the calibration split) and scored by onnxruntime on the validation split, most
   accurate first, each result cached per (architecture, precision) in ``<job dir>/int8``;
4. the front is the non-dominated set of the fp32 front and the measured int8 candidates.

The recommended model is verified like an fp32 one by the runner: exported, quantized
(:func:`deliver`), timed, scored on the test split, with ``precision`` and ``calibration`` in its
metadata. See ``docs/int8.md``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nasprune.evaluate import PerExample
from nasprune.export import export_subnet, stamp_metadata
from nasprune.latency.timing import make_session
from nasprune.quantize import DEFAULT_CALIBRATION, calibration_inputs, quantize_model, split_accuracy
from nasprune.search.pareto import is_dominated, pareto_records
from nasprune.search.study import TrialRecord

INT8_NUMBER_OFFSET = 1_000_000_000
"""int8 records are numbered ``offset + trial number`` while the front is verified (numbers key the
runner's bookkeeping); :func:`finish` gives the candidates their trial number back."""
MAX_QUANTIZED = 24
"""At most this many architectures are quantized and scored per job (most accurate first)."""


def candidate_id(subnet_key: str, precision: str) -> str:
    """The candidate id: the subnet key for fp32, 16 hex digits derived from it for int8."""
    if precision == "fp32":
        return subnet_key
    return hashlib.sha256(f"{subnet_key}:{precision}".encode()).hexdigest()[:16]


class Int8Scorer:
    """Quantizes architectures and scores them with onnxruntime; results cached per (architecture, split)."""

    def __init__(self, supernet, evaluator, folder: Path, calibration: str = DEFAULT_CALIBRATION):
        self.supernet, self.evaluator, self.calibration = supernet, evaluator, calibration
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._scores_path = self.folder / "scores.json"
        self.scores: dict[str, dict[str, float]] = (
            json.loads(self._scores_path.read_text()) if self._scores_path.is_file() else {}
        )
        self.quantized = 0

    def model(self, cfg) -> Path:
        """The int8 ONNX model of ``cfg`` (BatchNorm recalibrated as scored), quantized once."""
        path = self.folder / f"{cfg.key()}.onnx"
        if not path.is_file():
            flt = self.folder / f"{cfg.key()}.fp32.onnx"
            export_subnet(self.supernet, cfg, flt, model=self.evaluator.subnet(cfg))
            quantize_model(flt, path, calibration_inputs(self.evaluator.dataset), self.calibration,
                           metadata=int8_metadata(self.calibration))  # fmt: skip
            flt.unlink()
            self.quantized += 1
        return path

    def accuracy(self, cfg, split: str = "val") -> float:
        key = cfg.key()
        if split not in self.scores.get(key, {}):
            self.scores.setdefault(key, {})[split] = split_accuracy(self.model(cfg), self.evaluator.dataset, split)
            tmp = self._scores_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.scores))
            tmp.replace(self._scores_path)
        return self.scores[key][split]


def int8_metadata(calibration: str) -> dict[str, str]:
    return {
        "nasprune.precision": "int8",
        "nasprune.quantization": "onnxruntime static, QDQ, U8S8 (uint8 activations, int8 weights), per-channel weights",
        "nasprune.calibration": calibration,
    }


def expand_front(front: list, trials: list, job, table_int8, scorer: Int8Scorer, max_quantized: int = MAX_QUANTIZED):
    """The fp32 ``front`` joined with the int8 candidates that reach it (see the module docstring)."""
    space = scorer.supernet.space
    points = [(r.accuracy, r.latency_ms) for r in front]
    best: dict[str, object] = {}
    for r in trials:  # one record per architecture (a seeded config may be drawn again)
        if r.subnet_key not in best or r.accuracy > best[r.subnet_key].accuracy:
            best[r.subnet_key] = r
    int8 = []
    for r in sorted(best.values(), key=lambda r: (-r.accuracy, r.latency_ms)):
        cfg = space.parse_config(r.config)
        lat = table_int8.predict(cfg)
        if lat > job.latency_budget_ms or not _within_constraints(r, job):
            continue
        if is_dominated((r.accuracy, lat), points):  # even at its fp32 accuracy it cannot reach the front
            continue
        if scorer.quantized >= max_quantized and cfg.key() not in scorer.scores:
            break  # the most accurate ones were tried first
        acc = scorer.accuracy(cfg, "val")
        rec = TrialRecord(
            number=INT8_NUMBER_OFFSET + r.number, subnet_key=candidate_id(r.subnet_key, "int8"), config=r.config,
            accuracy=acc, latency_ms=lat, params=r.params, macs=r.macs, feasible=True, precision="int8",
        )  # fmt: skip
        int8.append(rec)
        points.append((acc, lat))
    return pareto_records([*front, *int8])


def _within_constraints(r, job) -> bool:
    c = job.constraints
    return (c.max_params is None or r.params <= c.max_params) and (c.max_macs is None or r.macs <= c.max_macs)


def is_int8(rec) -> bool:
    return getattr(rec, "precision", "fp32") == "int8"


def deliver(path: Path, rec, dataset, calibration: str = DEFAULT_CALIBRATION) -> None:
    """Make the exported float model at ``path`` what ``rec`` is: quantized in place for int8 (the same
    deterministic quantization the search scored), and ``precision`` stamped in its metadata."""
    if is_int8(rec):
        quantize_model(path, path, calibration_inputs(dataset), calibration, metadata=int8_metadata(calibration))
    else:
        stamp_metadata(path, {"precision": "fp32"})


def per_example(evaluator, rec, int8_dir: Path):
    """Per-example correctness and loss on the validation split: of the quantized model for int8
    records (onnxruntime, the :class:`Int8Scorer`'s file in ``int8_dir``), of the shared-weight subnet otherwise."""
    cfg = evaluator.supernet.space.parse_config(rec.config)
    if not is_int8(rec):
        return evaluator.per_example(cfg, "val")
    import torch

    sess = make_session(Path(int8_dir) / f"{cfg.key()}.onnx")
    x, y = evaluator.dataset.tensors("val")
    logits = np.concatenate([sess.run(None, {"input": x[i : i + 256].numpy()})[0] for i in range(0, len(y), 256)])
    t = torch.from_numpy(logits).double()
    loss = torch.nn.functional.cross_entropy(t, y, reduction="none")
    return PerExample(t.argmax(1) == y, loss)


def finish(candidates: list, scorer: Int8Scorer | None) -> None:
    """Give int8 candidates their trial number back and fill in precision, fp32 accuracy and the
    int8 test accuracy (onnxruntime, quantized model) of those that were exported."""
    for c in candidates:
        if c.trial_number < INT8_NUMBER_OFFSET:
            c.precision = "fp32"
            continue
        cfg = scorer.supernet.space.parse_config(c.config)
        c.trial_number -= INT8_NUMBER_OFFSET
        c.precision, c.calibration = "int8", scorer.calibration
        c.fp32_accuracy = scorer.evaluator.accuracy(cfg, "val")
        if c.test_accuracy is not None:
            c.test_accuracy = scorer.accuracy(cfg, "test")
