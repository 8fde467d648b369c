"""Optuna backend: an ask/tell loop in this process over the job's durable study.

The sampler works on an in-memory mirror of the durable study: a trial is asked, suggested and
told there (microseconds per call), and only its finished record is written to the durable
storage, in one write (``Study.add_trial``). Asking and suggesting directly on a journal or RDB
storage costs one write per parameter (about 14 ms a trial on this machine for 16 parameters,
``benchmarks/trial_storage.py``), for nothing a crash needs: a trial that had not finished is run
again anyway. Reopening a job loads its finished trials into a new mirror, so the sampler resumes
from the same history, and re-enqueues the seeds it has not run yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from nasprune.search.job import JobContext, SearchJob
from nasprune.search.objective import Objective
from nasprune.search.study import DIRECTIONS, TrialRecord, make_sampler, open_study, quiet_optuna

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def mirror(durable: optuna.Study, job: SearchJob) -> optuna.Study:
    """An in-memory study holding the durable study's finished trials, with the job's sampler."""
    mem = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler(job))
    for t in durable.get_trials(deepcopy=False, states=FINISHED):
        mem.add_trial(t)
    return mem


@quiet_optuna()
def run(
    objective: Objective,
    job: SearchJob,
    ctx: JobContext,
    on_trial: Callable[[TrialRecord], None],
    checkpoint_id: str = "",
) -> dict:
    """Run trials until the study holds ``job.n_trials`` complete ones (or stop/timeout), in this process.
    ``checkpoint_id`` is for backends that load the supernet elsewhere; nothing extra to report."""
    durable = open_study(job, ctx.job_id, ctx.storage_url)
    study = mirror(durable, job)
    for cfg in objective.seeds():  # skipped when a finished trial already has these parameters
        study.enqueue_trial(objective.params_of(cfg), skip_if_exists=True)
    deadline = time.monotonic() + job.timeout_s if job.timeout_s else None
    # One process runs a job at a time, so counting locally is exact (and numbers the durable trials).
    n_durable = len(durable.get_trials(deepcopy=False))
    done = sum(t.state is TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    while done < job.n_trials:
        if ctx.should_stop() or (deadline is not None and time.monotonic() > deadline):
            break
        run_trial(study, durable, objective, n_durable, on_trial)
        n_durable, done = n_durable + 1, done + 1
    return {}


def run_trial(
    study: optuna.Study,
    durable: optuna.Study,
    objective: Objective,
    number: int,
    on_trial: Callable[[TrialRecord], None],
    attrs: dict | None = None,
) -> None:
    """Ask the in-memory ``study`` for a trial (an enqueued one first), score it, write it to ``durable``
    as trial ``number`` in one write, and report it."""
    t0 = time.perf_counter()
    trial = study.ask()
    cfg = objective.suggest(trial)
    for k, v in (attrs or {}).items():
        trial.set_user_attr(k, v)
    metrics = objective.evaluate(cfg)
    trial.set_user_attr("metrics", metrics.model_dump())
    finished = study.tell(trial, [metrics.accuracy, metrics.latency_ms])
    durable.add_trial(finished)  # the one durable write: from here on a crash keeps this trial
    on_trial(
        TrialRecord(
            number=number,
            subnet_key=cfg.key(),
            config=cfg.model_dump(),
            duration_s=time.perf_counter() - t0,
            **metrics.model_dump(),
        )
    )
