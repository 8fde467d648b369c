"""Stand-ins for the real search (``nasprune.search.runner.run_job``) that follow its contract.

They report progress through ``ctx.on_progress``, honour ``ctx.should_stop()`` between "trials",
write ONNX files where the search does (``<job dir>/models/<candidate_id>.onnx``) and return a
``SearchResult``. They exist so the service tests do not wait for supernet training.
"""

from __future__ import annotations

import threading
import time

from nasprune.paths import job_files
from nasprune.search.job import Candidate, JobContext, Progress, SearchJob, SearchResult

FAKE_ONNX = b"\x08\x07fake-onnx-bytes" * 64


def candidate(i: int, accuracy: float, latency_ms: float, measured: float | None = None) -> Candidate:
    return Candidate(
        candidate_id=f"{i:016x}",
        trial_number=i,
        config={"depths": {}, "widths": {}},
        accuracy=accuracy,
        latency_ms=latency_ms,
        params=1000 * (i + 1),
        macs=5000 * (i + 1),
        feasible=True,
        verified=measured is not None,
        measured_latency_ms=measured,
    )


def result_for(job: SearchJob, ctx: JobContext, n_trials: int) -> SearchResult:
    """A front of two candidates; the first (recommended) has an exported model, the second none."""
    best = candidate(1, 0.9, job.latency_budget_ms * 0.8, measured=job.latency_budget_ms * 0.9)
    other = candidate(2, 0.8, job.latency_budget_ms * 0.5)
    path = job_files(ctx.output_dir).candidate(best.candidate_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FAKE_ONNX)
    return SearchResult(job=job, n_trials=n_trials, pareto=[best, other], recommended=best)


def instant_runner(job: SearchJob, ctx: JobContext) -> SearchResult:
    for i in range(job.n_trials):
        if ctx.should_stop():
            return result_for(job, ctx, i)
        ctx.on_progress(Progress(stage="searching", n_done=i + 1, n_total=job.n_trials, best_accuracy=0.5))
    return result_for(job, ctx, job.n_trials)


class GatedRunner:
    """Runs one "trial" every ``step_s`` until ``n_trials`` or ``should_stop``; records start order."""

    def __init__(self, step_s: float = 0.05):
        self.step_s = step_s
        self.started: list[str] = []
        self.running = threading.Semaphore(0)
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, job: SearchJob, ctx: JobContext) -> SearchResult:
        with self._lock:
            self.started.append(ctx.job_id)
        self.running.release()
        done = 0
        while not ctx.should_stop():
            if self.release.is_set():
                if done >= job.n_trials:
                    break
                done += 1
            ctx.on_progress(Progress(stage="searching", n_done=done, n_total=job.n_trials))
            time.sleep(self.step_s)
        return result_for(job, ctx, done)


def failing_runner(job: SearchJob, ctx: JobContext) -> SearchResult:
    ctx.on_progress(Progress(stage="preparing supernet", n_total=job.n_trials))
    raise RuntimeError("supernet checkpoint is corrupt")
