"""``run_job``: one search job from a request to a verified, exported recommendation.

1. get the trained supernet and the device's latency table (built once, cached in the data dir);
2. refuse a budget below the fastest subnet's predicted latency, saying what is achievable;
3. run the backend (Optuna or Ray Tune) until the durable study holds ``n_trials`` trials;
4. take the feasible Pareto front, export the most accurate candidates to ONNX and *measure* them
   on the device ("measure before you promise"); the recommendation is the most accurate one whose
   measured latency is within budget;
5. record everything in MLflow (parent run, child run per trial, front, plot, model) when a
   tracking URI is given, and write ``pareto.json``, ``pareto.png`` and ``model.onnx``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nasprune.errors import BudgetError
from nasprune.search.job import Candidate, JobContext, Progress, SearchJob, SearchResult
from nasprune.search.objective import Objective
from nasprune.search.study import TrialRecord, open_study, pareto_trials, record_of, trial_records

log = logging.getLogger(__name__)


def check_budget(job: SearchJob, table) -> float:
    """The fastest achievable predicted latency; raises :class:`BudgetError` if the budget is below it."""
    fastest = table.min_latency()
    if job.latency_budget_ms < fastest:
        raise BudgetError(
            f"latency budget {job.latency_budget_ms:g} ms is below the fastest subnet of '{job.space}' on "
            f"'{job.device}' ({fastest:.4f} ms predicted); the smallest achievable budget is {fastest:.4f} ms"
        )
    return fastest


def run_job(job: SearchJob, ctx: JobContext, progress_bar: bool = False) -> SearchResult:
    """Run (or resume) the job ``ctx.job_id`` to the end and return its result."""
    from nasprune.data import load_dataset
    from nasprune.evaluate import Evaluator
    from nasprune.latency.table import get_table
    from nasprune.registry import load_space
    from nasprune.train import checkpoint_id, get_supernet

    out = Path(ctx.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if job.model is not None:  # an uploaded model: its derived space lies beside its weights
        from nasprune.paths import models_dir

        space = load_space(models_dir(ctx.data_dir) / f"{job.model}.yaml")
    else:
        space = load_space(job.space)
    ctx.on_progress(
        Progress(
            stage="preparing supernet",
            n_total=job.n_trials,
            message="loading the trained supernet (training it once if needed)",
        )
    )
    supernet, ckpt = get_supernet(space, ctx.data_dir, progress=progress_bar)
    ctx.on_progress(
        Progress(
            stage="building latency table",
            n_total=job.n_trials,
            message=f"latency table for '{job.device}' (measured once if needed)",
        )
    )
    table = get_table(space, job.device, data_dir=ctx.data_dir, progress=progress_bar)
    check_budget(job, table)
    evaluator = Evaluator(supernet, load_dataset(space.dataset), checkpoint_id(ckpt))
    objective = Objective(supernet, evaluator, table, job)

    tracking = _start_tracking(job, ctx, table)
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
    if job.backend == "ray":
        from nasprune.search import ray_backend

        extra = ray_backend.run(objective, job, ctx, on_trial, checkpoint_id=checkpoint_id(ckpt))
    else:
        from nasprune.search import optuna_backend

        optuna_backend.run(objective, job, ctx, on_trial)

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
            table_error=_table_error(table),
            tracking_error=tracking.error if tracking else None,
        )
    report("verifying", "exporting and measuring the best candidates")
    unique: dict[str, TrialRecord] = {}
    for t in pareto_trials(study):  # a seeded config may also be drawn by the sampler: one entry each
        unique.setdefault(t.user_attrs["subnet_key"], record_of(t))
    front = list(unique.values())
    candidates, recommended = _verify(front, job, supernet, evaluator, table, out)
    if tracking:
        for rec in trials:
            if rec.number not in tracking.children:
                tracking.log_trial(rec)  # a trial finished before a crash but never reached MLflow
    result = SearchResult(
        job=job,
        n_trials=len(trials),
        pareto=candidates,
        recommended=recommended,
        table_error=_table_error(table),
        tracking_error=tracking.error if tracking else None,
    )
    _write_outputs(result, trials, job, out)
    if tracking:
        _finish_tracking(tracking, result, out, extra)
        result.tracking_error = tracking.error
    (out / "result.json").write_text(result.model_dump_json(indent=2))
    ctx.on_progress(
        Progress(
            stage="done",
            n_done=len(trials),
            n_total=job.n_trials,
            best_accuracy=best["acc"],
            best_latency_ms=best["lat"],
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


def machine_speed(now_ms: list[float], then_ms: list[float]) -> float:
    """The median ratio of reference subnets' times now to their times in the table (1.0 without any)."""
    import statistics

    ratios = [a / b for a, b in zip(now_ms, then_ms, strict=True) if a > 0 and b > 0]
    return statistics.median(ratios) if ratios else 1.0


def _references(table, supernet, folder: Path, n: int = 3) -> list[tuple[Path, float]]:
    """Up to ``n`` of the table's held-out subnets (spread over its range), exported, with the median
    latency the table measured for each."""
    from nasprune.latency.profile import export_all

    samples = sorted(table.error.samples if table.error is not None else [], key=lambda s: s.measured_ms)
    if not samples:
        return []
    picks = [samples[round(i * (len(samples) - 1) / max(n - 1, 1))] for i in range(min(n, len(samples)))]
    picks = list({s.config.key(): s for s in picks}.values())
    folder.mkdir(parents=True, exist_ok=True)
    paths = export_all(supernet, [s.config for s in picks], folder)
    return [(p, s.measured_ms) for p, s in zip(paths, picks, strict=True)]


def _verify(front: list[TrialRecord], job: SearchJob, supernet, evaluator, table, out: Path):
    """Export and measure front candidates, most accurate first, ``verify_top_k`` at a time, until one
    of them is within budget (or the front runs out).

    Each batch is timed like the table's own validation (interleaved rounds in sessions made for the
    device: ``measure_models``), so measured and predicted latency are comparable even for models
    that run in microseconds. The machine's speed drifts (a shared VM ran the same subnets 17-30%
    slower minutes after their table was validated, on a quiet machine): up to three of the table's
    held-out subnets are timed in the same rounds, and the candidates' medians are divided by the
    median ratio of their times now to their times when the table measured them
    (:func:`machine_speed`). On a device that is not this machine (an uploaded table) nothing can be
    measured: the most accurate candidate within the *predicted* budget is exported and recommended,
    unverified.
    """
    from nasprune.errors import LatencyTableError
    from nasprune.export import export_subnet, stamp_metadata
    from nasprune.latency.profile import ProfileSettings, check_runs_here, measure_models

    try:
        check_runs_here(table.device)
        here = True
    except LatencyTableError:
        here = False
    models = out / "models"
    measured: dict[int, float] = {}
    tested: dict[int, float] = {}
    recommended_number = None
    references = _references(table, supernet, out / "latency_references") if here else []
    speed: float | None = None
    queue = sorted(front, key=lambda r: (-r.accuracy, r.latency_ms))
    while queue and recommended_number is None:
        batch, queue = (queue[: job.verify_top_k], queue[job.verify_top_k :]) if here else (queue[:1], [])
        paths = []
        for rec in batch:
            meta = {
                "accuracy": rec.accuracy,
                "predicted_latency_ms": rec.latency_ms,
                "device": job.device,
                "trial": rec.number,
            }
            cfg = supernet.space.parse_config(rec.config)
            # the model that scored ``rec.accuracy``: extracted, BatchNorm recalibrated
            res = export_subnet(supernet, cfg, models / f"{rec.subnet_key}.onnx", meta, model=evaluator.subnet(cfg))
            paths.append(res.path)
            tested[rec.number] = evaluator.accuracy(cfg, "test")
        if here:
            timings = measure_models(paths + [p for p, _ in references], table.device, ProfileSettings())
            speed = machine_speed([t.median_ms for t in timings[len(paths) :]], [ms for _, ms in references])
            for rec, path, t in zip(batch, paths, timings, strict=False):
                measured[rec.number] = t.median_ms / speed
                stamp_metadata(path, {"measured_latency_ms": t.median_ms / speed, "measured_raw_ms": t.median_ms,
                                      "machine_speed": speed})  # fmt: skip
        recommended_number = next(
            (r.number for r in batch if not here or measured[r.number] <= job.latency_budget_ms), None
        )
    candidates = [
        Candidate(
            candidate_id=r.subnet_key,
            trial_number=r.number,
            config=r.config,
            accuracy=r.accuracy,
            latency_ms=r.latency_ms,
            params=r.params,
            macs=r.macs,
            feasible=r.feasible,
            verified=r.number in measured and measured[r.number] <= job.latency_budget_ms,
            measured_latency_ms=measured.get(r.number),
            machine_speed=speed if r.number in measured else None,
            test_accuracy=tested.get(r.number),
        )
        for r in front
    ]
    recommended = next((c for c in candidates if c.trial_number == recommended_number), None)
    if recommended is not None:
        src = models / f"{recommended.candidate_id}.onnx"
        (out / "model.onnx").write_bytes(src.read_bytes())
    return candidates, recommended


def _write_outputs(result: SearchResult, trials: list[TrialRecord], job: SearchJob, out: Path) -> None:
    from nasprune.search.plot import pareto_plot

    (out / "pareto.json").write_text(
        json.dumps(
            {
                "job": job.model_dump(),
                "recommended": result.recommended.model_dump() if result.recommended else None,
                "pareto": [c.model_dump() for c in result.pareto],
            },
            indent=2,
        )
    )
    pareto_plot(
        trials,
        {c.trial_number for c in result.pareto},
        job.latency_budget_ms,
        result.recommended.trial_number if result.recommended else None,
        out / "pareto.png",
        title=f"{job.space} on {job.device}: {len(trials)} trials ({job.sampler}, {job.backend})",
    )


def _start_tracking(job: SearchJob, ctx: JobContext, table):
    if not ctx.tracking_uri:
        return None
    from nasprune.tracking import JobTracker, MlflowTracker

    tracking = JobTracker(MlflowTracker(ctx.tracking_uri), f"nasprune/{job.space}")
    marker = Path(ctx.output_dir) / "mlflow_run_id"
    existing = marker.read_text().strip() if marker.is_file() else None
    params = {**job.model_dump(mode="json"), "job_id": ctx.job_id}
    run_id = tracking.start(ctx.job_id, f"job-{ctx.job_id}", params, existing_run_id=existing)
    if run_id:
        marker.write_text(run_id)
        err = _table_error(table)
        if err:
            tracking.tracker.log_metrics(
                run_id, {f"table_{k}": v for k, v in err.items() if isinstance(v, int | float)}
            )
    return tracking


def _finish_tracking(tracking, result: SearchResult, out: Path, extra: dict) -> None:
    tracking.flush()
    front = {c.trial_number: c for c in result.pareto}
    for number, cand in front.items():
        tracking.tag_trial(number, {"pareto": "true", "verified": str(cand.verified).lower()})
    parent = tracking.parent
    t = tracking.tracker
    summary = {"n_trials": result.n_trials, "pareto_size": len(result.pareto)}
    if result.recommended:
        r = result.recommended
        summary.update(
            {
                "best_accuracy": r.accuracy,
                "best_predicted_latency_ms": r.latency_ms,
                "best_measured_latency_ms": r.measured_latency_ms or 0.0,
            }
        )
        t.set_tags(parent, {"nasprune.recommended": r.candidate_id})
    t.log_metrics(parent, summary)
    if extra.get("nodes"):
        t.set_tags(
            parent,
            {
                "nasprune.ray_nodes": json.dumps(extra["nodes"]),
                "nasprune.ray_node_ids": json.dumps(extra.get("node_ids", {})),
            },
        )
    for name in ("pareto.json", "pareto.png"):
        t.log_artifact(parent, out / name)
    if (out / "model.onnx").is_file():
        t.log_artifact(parent, out / "model.onnx", "model")
    tracking.close()
