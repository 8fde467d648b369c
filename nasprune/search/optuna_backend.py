"""Optuna backend: an ask/tell loop in this process over the job's durable study."""

from __future__ import annotations

import time
from collections.abc import Callable

from nasprune.search.job import JobContext, SearchJob
from nasprune.search.objective import Objective
from nasprune.search.study import TrialRecord, n_complete, open_study


def run(objective: Objective, job: SearchJob, ctx: JobContext, on_trial: Callable[[TrialRecord], None]) -> None:
    """Run trials until the study holds ``job.n_trials`` complete ones (or stop/timeout)."""
    study = open_study(job, ctx.job_id, ctx.storage_url)
    if not study.user_attrs.get("seeded"):
        for cfg in objective.seeds():
            study.enqueue_trial(objective.params_of(cfg), skip_if_exists=True)
        study.set_user_attr("seeded", True)
    deadline = time.monotonic() + job.timeout_s if job.timeout_s else None
    done = n_complete(study)  # one process runs a job at a time, so counting locally is exact
    while done < job.n_trials:
        if ctx.should_stop() or (deadline is not None and time.monotonic() > deadline):
            break
        t0 = time.perf_counter()
        trial = study.ask()
        cfg = objective.suggest(trial)
        metrics = objective.evaluate(cfg)
        trial.set_user_attr("metrics", metrics.model_dump())
        study.tell(trial, [metrics.accuracy, metrics.latency_ms])
        done += 1
        on_trial(
            TrialRecord(
                number=trial.number,
                subnet_key=cfg.key(),
                config=cfg.model_dump(),
                duration_s=time.perf_counter() - t0,
                **metrics.model_dump(),
            )
        )
