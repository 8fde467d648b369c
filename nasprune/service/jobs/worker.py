"""The worker pool: a bounded set of threads that take queued jobs (fair share across users) and run them.

A job runs ``runner(job, ctx)`` (by default ``nasprune.search.runner.run_job``). The runner reports
progress through ``ctx.on_progress`` and checks ``ctx.should_stop()`` between trials; when that
returns True it stops at the trial boundary and returns (or raises). Its trials are in durable
Optuna storage, so a job stopped by a shutdown or lost in a crash is re-queued and resumes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import uuid4

from nasprune.errors import NasPruneError
from nasprune.search.job import JobContext, Progress, SearchJob, SearchResult
from nasprune.service.jobs.status import JobStatus
from nasprune.service.jobs.store import JobRecord, JobStore
from nasprune.service.jobs.tracking import check_tracking, close_job_run, find_job_run, is_server
from nasprune.settings import Settings, is_sqlite

Runner = Callable[[SearchJob, JobContext], SearchResult]

MAX_ATTEMPTS = 3
PROGRESS_MIN_INTERVAL_S = 0.5
CANCEL_CHECK_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def _utc(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S UTC")


def default_runner(job: SearchJob, ctx: JobContext) -> SearchResult:
    """The real search, imported when a job starts (the search stack is heavy and optional at import)."""
    from nasprune.search.runner import run_job

    return run_job(job, ctx)


@dataclass
class _Active:
    """A job this pool is running."""

    record: JobRecord
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    last_progress: Progress | None = None
    last_write: float = 0.0
    last_cancel_check: float = 0.0
    has_run_link: bool = False
    tracking_down_since: float | None = None


class WorkerPool:
    """``settings.workers`` threads sharing one queue (the job table), fair share across users
    (``JobStore.claim_next``), oldest job first within a user.

    ``start()`` first re-queues jobs left running by a crash: all of them for a SQLite store (one
    machine, one server per data dir), those silent for 3 heartbeats for a server database (other
    workers may be alive). While running, it sends heartbeats and re-queues other workers' stale jobs.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        runner: Runner | None = None,
        *,
        tracking_uri: str | None = None,
        owner: str | None = None,
    ):
        self.store = store
        self.settings = settings
        self.runner = runner or default_runner
        self.tracking_uri = tracking_uri or settings.effective_tracking_uri
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[Callable[[str], None]] = []

    @property
    def stale_after(self) -> timedelta:
        return timedelta(seconds=3 * self.settings.heartbeat_s)

    # lifecycle -----------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Recover orphaned jobs, then start the workers; returns the ids of the recovered jobs."""
        single_node = is_sqlite(self.store.url)
        recovered = self.store.requeue_stale(timedelta(0) if single_node else self.stale_after)
        if recovered:
            log.info("re-queued %d job(s) left running by a previous server: %s", len(recovered), recovered)
        self._stopping.clear()
        for i in range(self.settings.workers):
            t = threading.Thread(target=self._work, name=f"nasprune-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._heartbeat, name="nasprune-heartbeat", daemon=True)
        t.start()
        self._threads.append(t)
        return recovered

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask running jobs to stop at their next trial and re-queue them; wait up to ``timeout_s``."""
        self._stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = list(self._active.values())
        for active in stuck:
            active.lost = True
            self.store.requeue(active.record.id, owner=self.owner, count_attempt=False)
        self._changed([a.record.id for a in stuck])
        if stuck:
            log.warning(
                "jobs still inside a trial after %.0f s were re-queued (they resume on the next start): %s",
                timeout_s,
                [a.record.id for a in stuck],
            )
        self._threads = []

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(job_id)`` after this pool changes a job's status in the store.

        That is when a job starts, finishes or is re-queued (not on progress), from a worker thread:
        readers that cache jobs drop them. The callback must be quick and must not raise.
        """
        self._listeners.append(callback)

    def _changed(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for callback in self._listeners:
                callback(job_id)

    def notify(self) -> None:
        """Wake idle workers (called after a submit)."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> None:
        """Tell a job running in this pool to stop at its next trial (the store already has the flag)."""
        with self._lock:
            active = self._active.get(job_id)
        if active is not None:
            active.cancel.set()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._active)

    # workers -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                limit = self.settings.user_max_running if self.settings.auth == "users" else None
                record = self.store.claim_next(self.owner, default_max_running=limit)
            except Exception:
                log.exception("could not read the job queue; retrying")
                record = None
            if record is None:
                with self._wake:
                    self._wake.wait(self.settings.poll_s)
                continue
            try:
                self._run(record)
            except Exception:
                log.exception("job %s: unexpected error in the worker", record.id)

    def _run(self, record: JobRecord) -> None:
        job_id = record.id
        active = _Active(record)
        with self._lock:
            self._active[job_id] = active
        self._changed([job_id])
        try:
            if record.attempts > MAX_ATTEMPTS:
                self.store.finish(
                    job_id,
                    JobStatus.FAILED,
                    owner=self.owner,
                    error=f"gave up after {MAX_ATTEMPTS} attempts: the worker stopped while running this job each time",
                )
                try:  # its MLflow run must not stay RUNNING
                    close_job_run(self.tracking_uri, self.settings.job_dir(job_id), "FAILED")
                except Exception as e:
                    log.warning("job %s: could not close its MLflow run: %s", job_id, e)
                return
            out_dir = self.settings.job_dir(job_id)
            out_dir.mkdir(parents=True, exist_ok=True)
            ctx = JobContext(
                job_id=job_id,
                storage_url=self.settings.trial_storage_url,
                output_dir=out_dir,
                data_dir=self.settings.data_dir,
                tracking_uri=self.tracking_uri,
                ray_address=self.settings.ray_address,
                tracking_drain_s=self.settings.tracking_drain_s,
                on_progress=lambda p: self._on_progress(active, p),
                should_stop=lambda: self._should_stop(active),
            )
            result: SearchResult | None = None
            error: str | None = None
            try:
                result = self.runner(record.spec, ctx)
            except NasPruneError as e:
                error = str(e)
            except Exception as e:
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                error = f"internal error: {type(e).__name__}: {e}"
            self._conclude(active, result, error)
        finally:
            self._changed([job_id])
            with self._lock:
                self._active.pop(job_id, None)

    def _conclude(self, active: _Active, result: SearchResult | None, error: str | None) -> None:
        job_id = active.record.id
        if active.lost:
            log.warning("job %s was taken over by another worker; dropping this worker's outcome", job_id)
            return
        cancelled = active.cancel.is_set() or self.store.is_cancel_requested(job_id)
        if self._stopping.is_set() and not cancelled:
            self.store.requeue(job_id, owner=self.owner, count_attempt=False)
            return
        if not isinstance(result, SearchResult) and error is None:
            error = f"internal error: the search returned {type(result).__name__}, not a SearchResult"
            result = None
        last = active.last_progress or active.record.progress or Progress(stage="done")
        n_done = result.n_trials if result is not None else last.n_done
        if cancelled:
            status = JobStatus.CANCELLED
            message = f"cancelled after {n_done} trial(s)"
        elif error is not None:
            status = JobStatus.FAILED
            message = "failed"
        else:
            status = JobStatus.SUCCEEDED
            message = f"finished {n_done} trial(s)"
        best = result.recommended if result is not None else None
        done = last.model_copy(
            update={
                "stage": "done",
                "n_done": n_done,
                "message": message,
                **({"best_accuracy": best.accuracy, "best_latency_ms": best.latency_ms} if best else {}),
            }
        )
        self._link_run(active)
        self.store.finish(
            job_id, status, owner=self.owner, result=result, error=None if cancelled else error, progress=done
        )

    def _on_progress(self, active: _Active, progress: Progress) -> None:
        now = time.monotonic()
        stage_changed = active.last_progress is None or active.last_progress.stage != progress.stage
        active.last_progress = progress
        if stage_changed or now - active.last_write >= PROGRESS_MIN_INTERVAL_S:
            active.last_write = now
            if not self.store.set_progress(active.record.id, progress, owner=self.owner):
                active.lost = not self._still_ours(active.record.id)

    def _still_ours(self, job_id: str) -> bool:
        rec = self.store.get(job_id)
        return rec.status is JobStatus.RUNNING and rec.owner == self.owner

    def _should_stop(self, active: _Active) -> bool:
        if active.cancel.is_set() or active.lost or self._stopping.is_set():
            return True
        now = time.monotonic()
        if now - active.last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
            active.last_cancel_check = now
            if self.store.is_cancel_requested(active.record.id):
                active.cancel.set()
                return True
        return False

    # housekeeping --------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_s):
            try:
                self.store.heartbeat(self.owner, self.running())
                requeued = self.store.requeue_stale(self.stale_after)
                self._changed(requeued)
                if requeued:
                    log.info("re-queued job(s) of a worker that stopped answering: %s", requeued)
                    self.notify()
                with self._lock:
                    active = list(self._active.values())
                self._watch_tracking(active)
                for a in active:
                    self._link_run(a)
            except Exception:
                log.exception("heartbeat failed; retrying")

    def _watch_tracking(self, active: list[_Active]) -> None:
        """Show on each running job, within one heartbeat, that its tracking server is down, and when it is back."""
        if not active or not is_server(self.tracking_uri):
            return
        problem = check_tracking(self.tracking_uri)
        now = time.time()
        for a in active:
            if problem is not None:
                a.tracking_down_since = a.tracking_down_since or now
                message = (
                    f"{problem} since {_utc(a.tracking_down_since)}; the search goes on, its trials are kept and "
                    "logged to MLflow when it is back"
                )
            elif a.tracking_down_since is not None:
                message = (
                    f"MLflow was unreachable from {_utc(a.tracking_down_since)} to {_utc(now)}; the trials of that "
                    "time are logged late"
                )
                a.tracking_down_since = None
            else:
                continue
            self.store.set_tracking_error(a.record.id, message)

    def _link_run(self, active: _Active) -> None:
        if active.has_run_link or not is_server(self.tracking_uri):
            return
        try:
            found = find_job_run(self.tracking_uri, active.record.id, self.settings.job_dir(active.record.id))
        except Exception as e:
            log.debug("job %s: MLflow run lookup failed: %s", active.record.id, e)
            return
        if found is not None:
            self.store.set_tracking(active.record.id, *found)
            active.has_run_link = True
