"""Deliver a tier-0 model like every model: exported, checked, *measured* within the budget, scored.

:func:`deliver` prunes to the budget (:class:`~nasprune.search.tier0.Tier0`), exports the repaired model
(``onnx.checker``, onnxruntime parity), times it on this machine with the search's verification (the
interleaved rounds of :func:`nasprune.search.verify.time_rounds`, corrected by the table's reference
subnets timed alongside, distrusted when the machine is too busy), and when the measurement misses the
budget asks the knapsack again for a proportionally smaller target and retries. The file's metadata
says what it is: ``tier: 0``, its weights, accuracies, predicted and measured latency, how to feed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nasprune.data import preprocessing_metadata
from nasprune.errors import LatencyTableError
from nasprune.evaluate import accuracy_of
from nasprune.export import export_subnet, stamp_metadata
from nasprune.latency.profile import check_runs_here
from nasprune.search.tier0 import Tier0, Tier0Result
from nasprune.search.verify import VerifySettings, distrust, load_avg, machine_speed, reference_subnets, time_rounds


@dataclass
class Delivery:
    """What :func:`deliver` wrote and how it measured."""

    path: Path
    result: Tier0Result
    val_accuracy: float
    test_accuracy: float
    measured_ms: float | None
    verified: bool
    unverified_reason: str | None
    attempts: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def deliver(
    pruner: Tier0,
    budget_ms: float,
    path: str | Path,
    repair: str = "ls",
    retries: int = 3,
    verify=None,
    references_dir: str | Path | None = None,
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> Delivery:
    """Prune with ``pruner`` to ``budget_ms``, export to ``path``, measure, step down while the
    measurement misses (at most ``retries`` times), stamp the metadata. ``verify``: the
    :class:`~nasprune.search.verify.VerifySettings` (default: the search's)."""
    import tempfile


    t_start = time.perf_counter()
    settings = verify or VerifySettings()
    path = Path(path)
    table, ds = pruner.table, pruner.dataset
    on_progress("scoring channels and blocks, and measuring each width and depth, on the calibration split")
    pruner.prepare()
    try:
        check_runs_here(table.device)
        here: str | None = None
    except LatencyTableError as e:
        here = f"not measured: {e}"
    references: list[tuple[Path, float]] = []
    target, attempts, spent = budget_ms, [], {"export_s": 0.0, "measure_s": 0.0}
    for attempt in range(retries + 1):
        on_progress(f"choosing widths and depths for {target:.4g} ms (attempt {attempt + 1})")
        choice = pruner.choose(target)
        on_progress(f"repairing the subnet ({repair})")
        model, layers = pruner.build(choice.config, repair)
        result = Tier0Result(model, choice.config, choice.predicted_ms, budget_ms, choice.loss, pruner.kind, repair,
                             dict(pruner.timings), layers, choice)  # fmt: skip
        on_progress("exporting and checking the ONNX model")
        t0 = time.perf_counter()
        export_subnet(pruner.supernet, choice.config, path, {"tier": 0}, model=model)
        spent["export_s"] += time.perf_counter() - t0
        result.timings.update(spent)
        if here is not None:
            measured, why = None, here
            attempts.append({"target_ms": target, "predicted_ms": choice.predicted_ms, "measured_ms": None})
            break
        on_progress("measuring the model on this machine")
        t0 = time.perf_counter()
        if not references:
            folder = Path(references_dir) if references_dir else Path(tempfile.mkdtemp(prefix="nasprune-refs-"))
            references = reference_subnets(table, pruner.supernet, folder)
        measured, why, timing = _measure(path, references, table, settings)
        spent["measure_s"] += time.perf_counter() - t0
        result.timings.update(spent)
        attempts.append({"target_ms": target, "predicted_ms": choice.predicted_ms, "measured_ms": measured, **timing})
        if measured is None or measured <= budget_ms:
            break
        if attempt == retries:
            break
        on_progress(f"measured {measured:.4g} ms > budget {budget_ms:.4g} ms: choosing again for less")
        target = min(target * budget_ms / measured, choice.predicted_ms) * 0.99
        if target < table.min_latency():
            break
    xv, yv = ds.tensors("val")
    xt, yt = ds.tensors("test")
    val, test = accuracy_of(model, xv, yv), accuracy_of(model, xt, yt)
    verified = measured is not None and measured <= budget_ms
    if measured is not None and not verified:
        why = f"measured {measured:.4g} ms > budget {budget_ms:.4g} ms after {len(attempts)} attempt(s)"
    result.timings["total_s"] = time.perf_counter() - t_start
    if result.config == pruner.space.largest():
        result.repair = "none"
    how = {"none": "", "bn": ", BatchNorm recalibrated",
           "ls": ", BatchNorm recalibrated, layers refitted by least squares"}[result.repair]  # fmt: skip
    meta = {
        "tier": 0,
        "delivered": "tier 0",
        "weights": f"tier 0: the trained weights{how} (no training)",
        "importance": pruner.kind,
        "values": pruner.value_kind,
        "repair": result.repair,
        "accuracy": val,
        "test_accuracy": test,
        "predicted_latency_ms": result.predicted_ms,
        "budget_ms": budget_ms,
        "device": table.device.name,
        "verified": verified,
        "tier0_attempts": attempts,
        "tier0_timings": {k: round(v, 3) for k, v in result.timings.items()},
        **({"measured_latency_ms": measured} if measured is not None else {}),
        **({"unverified_reason": why} if why else {}),
        **(attempts[-1] if attempts else {}),
        **preprocessing_metadata(ds),
    }
    meta.pop("target_ms", None)
    meta.pop("measured_ms", None)
    stamp_metadata(path, meta)
    return Delivery(path, result, val, test, measured, verified, why, attempts, time.perf_counter() - t_start)


def _measure(path: Path, references, table, settings) -> tuple[float | None, str | None, dict]:
    """The model's latency at the table's machine speed (None when the timing cannot be trusted), why
    not, and the timing's details; as the search's verification measures its candidates."""
    for attempt in range(1, settings.attempts + 1):
        load = load_avg()
        timings = time_rounds([path] + [p for p, _ in references], table.device, settings, seed=attempt)
        cand, refs = timings[0], timings[1:]
        speed = machine_speed([t.best_ms for t in refs], [ms for _, ms in references])
        _, reasons = distrust([cand], list(zip(refs, [ms for _, ms in references], strict=True)), settings)
        if reasons[0] is None:
            break
    ms = cand.best_ms / speed
    why = reasons[0] if reasons[0] is None else f"{reasons[0]} (in each of {attempt} attempts)"
    detail = {
        "measured_raw_ms": cand.best_ms,
        "machine_speed": speed,
        "latency_statistic": f"minimum of {len(cand.round_medians)} per-round medians",
        "latency_spread": round(cand.spread, 4),
        "load_avg": load,
        "timing_attempts": attempt,
    }
    return (None if why else ms), why, detail


__all__ = ["Delivery", "deliver"]
