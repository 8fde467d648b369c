"""What the routes do, free of HTTP: submit, read, cancel jobs; read trials, fronts and model files."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread

from nasprune.paths import job_files
from nasprune.search.job import Candidate, SearchResult
from nasprune.service.api.catalog import Catalog
from nasprune.service.api.schemas import JobCreate, JobPublic, TrialPublic, finite_or_none
from nasprune.service.api.status_cache import StatusCache
from nasprune.service.auth import LOCAL_ADMIN, Principal, UserStore
from nasprune.service.jobs.errors import (
    BudgetUnreachable,
    CandidateNotFound,
    InvalidRequest,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
)
from nasprune.service.jobs.status import JobStatus
from nasprune.service.jobs.store import JobRecord, JobStore
from nasprune.service.jobs.worker import WorkerPool
from nasprune.settings import Settings

log = logging.getLogger(__name__)

# Submissions run in at most this many threads: they serialise on the store's insert anyway, and a
# burst of them in every request thread would hold the GIL against the event loop (status polls).
SUBMIT_THREADS = 1


@dataclass(frozen=True)
class ModelFile:
    path: Path
    filename: str
    etag: str


def _aware(moment: datetime | None) -> datetime | None:
    """Optuna's trial times are naive local time: the same instant, in UTC."""
    return None if moment is None else moment.astimezone(UTC)


class TrialReader:
    """Trials of a job from the Optuna storage (study name = job id); one storage object, opened lazily."""

    def __init__(self, storage_url: str):
        self.storage_url = storage_url
        self._storage = None
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._storage is None:
                from nasprune.search.study import make_storage

                self._storage = make_storage(self.storage_url)
            return self._storage

    def page(self, job_id: str, limit: int, offset: int) -> tuple[int, list[TrialPublic]]:
        from nasprune.search.study import trial_constraints

        storage = self._open()
        try:
            study_id = storage.get_study_id_from_name(job_id)
        except KeyError:
            return 0, []
        trials = storage.get_all_trials(study_id, deepcopy=False)
        items = [
            TrialPublic(
                number=t.number,
                state=t.state.name.lower(),
                values=finite_or_none(list(t.values)) if t.values is not None else None,
                params=finite_or_none(dict(t.params)),
                user_attrs=finite_or_none(dict(t.user_attrs)),
                constraints=finite_or_none(trial_constraints(t)),
                started_at=_aware(t.datetime_start),
                completed_at=_aware(t.datetime_complete),
            )
            for t in trials[offset : offset + limit]
        ]
        return len(trials), items

    def close(self) -> None:
        """Release the storage's connections: an RDB storage has an engine; a journal file has nothing open."""
        with self._lock:
            storage, self._storage = self._storage, None
        if storage is None:
            return
        from optuna.storages import RDBStorage

        if isinstance(storage, RDBStorage):
            storage.remove_session()
            storage.engine.dispose()


class JobService:
    """The service's operations. Finished jobs never change, so their parsed results are kept (LRU)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pool: WorkerPool | None,
        catalog: Catalog,
        users: UserStore | None = None,
    ):
        self.settings = settings
        self.store = store
        self.pool = pool
        self.catalog = catalog
        self.users = users
        self._owners: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()  # never change
        self.trials_reader = TrialReader(settings.trial_storage_url)
        self._results: OrderedDict[str, SearchResult] = OrderedDict()
        self._etags: dict[tuple[str, int, int], str] = {}
        self._statuses = StatusCache(self.status)
        self._submit_limiter = anyio.CapacityLimiter(SUBMIT_THREADS)
        self._lock = threading.Lock()
        if pool is not None:
            pool.on_change(self.forget_status)

    # jobs -----------------------------------------------------------------------------------------

    def submit(self, body: JobCreate, who: Principal = LOCAL_ADMIN) -> JobRecord:
        """Check the request against this server, persist the job, then wake a worker.

        ``who`` must be able to read the model, the device and the dataset the job names: another
        user's are answered as unknown, exactly like names that do not exist.
        """
        limit = self.settings.max_trials_per_job
        if body.n_trials > limit:
            raise InvalidRequest("n_trials", f"{body.n_trials} is more than this server allows per job ({limit})")
        hidden_devices = self.hidden_from("device", who)
        if body.model is not None:  # its table is built by its first job, which checks the budget itself
            if not self.can_read("model", body.model, who):
                from nasprune.service.api.errors import ModelNotFound

                raise ModelNotFound(body.model)
            self.catalog.check_model(body.model)
            self.catalog.check_device(body.device, hidden_devices)
        else:
            self.catalog.check_space(body.space)
            self.catalog.check_device(body.device, hidden_devices)
            min_ms = self.catalog.min_latency_ms(body.space, body.device, body.precisions)
            if min_ms is not None and body.latency_budget_ms < min_ms:
                raise BudgetUnreachable(body.latency_budget_ms, min_ms, body.space, body.device)
        self.check_dataset(body, who)
        spec = body.to_search_job()
        quota = None
        if who.name is not None and self.users is not None:
            quota = self.users.get_user(who.name).max_queued
            quota = self.settings.user_max_queued if quota is None else quota
        record = self.store.create(
            spec, max_queued=self.settings.max_queued_jobs, user=who.name, team=who.team, user_max_queued=quota
        )
        self.audit(who, "job.submit", f"job:{record.id}")
        if self.pool is not None:
            self.pool.notify()
        return record

    # who sees what --------------------------------------------------------------------------------

    def audit(self, who: Principal, action: str, target: str, detail: str | None = None) -> None:
        if self.users is not None:
            self.users.record(who.name, action, target, detail)

    def can_read(self, kind: str, name: str, who: Principal) -> bool:
        return who.is_admin or self.users is None or self.users.visible(kind, name, who)

    def hidden_from(self, kind: str, who: Principal) -> set[str]:
        return set() if who.is_admin or self.users is None else self.users.hidden_names(kind, who)

    def check_job(self, job_id: str, who: Principal) -> None:
        """``JobNotFound`` unless ``who`` may see the job: another's job is answered like one that does not exist."""
        if who.is_admin:
            return
        with self._lock:
            owner = self._owners.get(job_id)
        if owner is None:
            record = self.store.get(job_id)
            owner = (record.user_name, record.team)
            with self._lock:
                self._owners[job_id] = owner
                while len(self._owners) > 10_000:
                    self._owners.popitem(last=False)
        if not who.sees(*owner):
            raise JobNotFound(job_id)

    def check_dataset(self, body: JobCreate, who: Principal = LOCAL_ADMIN) -> None:
        """The job's dataset (its own ``dataset``, else its space's) exists, is intact, and fits the model."""
        from nasprune.data import check_dataset_fits
        from nasprune.errors import DatasetError
        from nasprune.search.resolve import job_spaces

        spaces = job_spaces(body, self.settings.data_dir)  # the worker's run_job resolves it the same way
        if body.tier0 == "only":  # it prunes trained weights: refuse now what the worker could not do
            from nasprune.search.tier0.job import source_of

            source, why = source_of(body, spaces.space, self.settings.data_dir)
            if source is None:
                raise InvalidRequest("tier0", why)
        space, name = spaces.table_space, spaces.space.dataset
        if not name:  # refused now: the worker would build the latency table, then fail on the missing data
            what = f"model {body.model} was uploaded" if body.model is not None else f"space '{body.space}' is"
            raise InvalidRequest(
                "dataset",
                f"{what} without a dataset: name the data to train and score on (a built-in or one uploaded "
                "with POST /v1/datasets)",
            )
        if not self.can_read("dataset", name, who):
            from nasprune.data import BUILTIN_INPUTS
            from nasprune.datasets import DatasetStore

            hidden = self.hidden_from("dataset", who)
            names = [*BUILTIN_INPUTS, *(n for n in DatasetStore.at(self.settings.data_dir).names() if n not in hidden)]
            raise InvalidRequest("dataset", f"unknown dataset '{name}' (available: {', '.join(names)})")
        try:
            check_dataset_fits(name, space, self.settings.data_dir)
        except DatasetError as e:
            raise InvalidRequest("dataset", str(e)) from None

    async def submit_in_thread(self, body: JobCreate, who: Principal = LOCAL_ADMIN) -> JobRecord:
        """``submit(body, who)`` in a worker thread, at most ``SUBMIT_THREADS`` at a time."""
        return await anyio.to_thread.run_sync(self.submit, body, who, limiter=self._submit_limiter)

    def status(self, job_id: str) -> bytes:
        """The job as ``JobPublic`` JSON, read from the store now."""
        return JobPublic.of(self.store.get(job_id), self.settings.tracking_uri).model_dump_json().encode()

    async def recent_status(self, job_id: str, who: Principal = LOCAL_ADMIN) -> bytes:
        """``status(job_id)`` as read less than ``STATUS_CACHE_S`` ago (``StatusCache``).

        Status polls are the hottest request: under load they are answered on the event loop, as
        already-encoded JSON, with no database read, thread hop or serialisation of their own.
        """
        if not who.is_admin:
            with self._lock:
                known = job_id in self._owners
            if known:
                self.check_job(job_id, who)
            else:
                await anyio.to_thread.run_sync(self.check_job, job_id, who)
        return await self._statuses.get(job_id)

    def forget_status(self, job_id: str) -> None:
        """The job changed: its next status poll reads the store."""
        self._statuses.forget(job_id)

    def list(
        self,
        status: JobStatus | None,
        limit: int,
        offset: int,
        who: Principal = LOCAL_ADMIN,
        user: str | None = None,
    ) -> tuple[int, list[JobRecord]]:
        """A page of the jobs ``who`` sees (of ``user`` only, when given), newest first."""
        visible_to = None if who.is_admin else (who.name, who.team)
        return self.store.list(status, limit=limit, offset=offset, visible_to=visible_to, user=user)

    def cancel(self, job_id: str, who: Principal = LOCAL_ADMIN) -> JobRecord:
        self.check_job(job_id, who)
        self.audit(who, "job.cancel", f"job:{job_id}")  # the attempt: a finished job answers 409 next
        record = self.store.request_cancel(job_id)
        self.forget_status(job_id)
        if record.status is JobStatus.RUNNING and self.pool is not None:
            self.pool.cancel(job_id)
        elif record.status is JobStatus.CANCELLED and record.attempts > 0:
            self._close_run_later(job_id)
        return record

    def _close_run_later(self, job_id: str) -> None:
        """A job cancelled while queued *again* (its worker died mid-job) has an MLflow run left RUNNING
        by that attempt: end it KILLED, off the request's thread (MLflow may be slow or down)."""
        from nasprune.service.jobs.tracking import close_job_run

        uri = self.pool.tracking_uri if self.pool is not None else self.settings.effective_tracking_uri

        def close() -> None:
            try:
                close_job_run(uri, self.settings.job_dir(job_id), "KILLED")
            except Exception as e:  # the job is cancelled either way; the run's status is cosmetic here
                log.warning("job %s: could not close its MLflow run: %s", job_id, e)

        threading.Thread(target=close, name=f"close-run-{job_id[:8]}", daemon=True).start()

    # results --------------------------------------------------------------------------------------

    def trials(
        self, job_id: str, limit: int, offset: int, who: Principal = LOCAL_ADMIN
    ) -> tuple[int, list[TrialPublic]]:
        self.check_job(job_id, who)
        self.store.get(job_id)
        return self.trials_reader.page(job_id, limit, offset)

    def result(self, job_id: str, who: Principal = LOCAL_ADMIN) -> tuple[JobRecord, SearchResult]:
        """The job and its search result; ``JobNotFinished`` / ``JobHasNoResult`` otherwise."""
        self.check_job(job_id, who)
        record = self.store.get(job_id)
        if not record.status.is_finalized:
            raise JobNotFinished(job_id, record.status.value)
        with self._lock:
            cached = self._results.get(job_id)
            if cached is not None:
                self._results.move_to_end(job_id)
                return record, cached
        full = self.store.get(job_id, with_result=True)
        result = full.result
        if result is None:
            why = f": {full.error}" if full.error else ""
            raise JobHasNoResult(f"job '{job_id}' {full.status.value} without a search result{why}")
        with self._lock:
            self._results[job_id] = result
            while len(self._results) > 128:
                self._results.popitem(last=False)
        return record, result

    def model_file(self, job_id: str, candidate_id: str | None = None, who: Principal = LOCAL_ADMIN) -> ModelFile:
        """The ONNX file of ``candidate_id`` (the recommended candidate when None), if ``who`` sees the job."""
        self.check_job(job_id, who)
        model = self._model_file(job_id, candidate_id)
        self.audit(who, "job.download", f"job:{job_id}", model.filename)
        return model

    def _model_file(self, job_id: str, candidate_id: str | None = None) -> ModelFile:
        """The ONNX file of ``candidate_id``, or of the recommended candidate when None. The tier-0 model
        can be fetched by its id as soon as the job reports it, before the job ends."""
        if candidate_id is not None:
            record = self.store.get(job_id)
            early = record.progress.tier0 if record.progress is not None else None
            if early is not None and early.candidate_id == candidate_id:
                path = job_files(self.settings.job_dir(job_id)).candidate(candidate_id)
                if path.is_file():
                    return ModelFile(path, f"nasprune-{record.spec.space}-tier0-{candidate_id}.onnx", self._etag(path))
        record, result = self.result(job_id)
        if candidate_id is None:
            if result.recommended is None:
                raise CandidateNotFound(
                    f"job '{job_id}' has no recommended model: no verified candidate's measured latency is within "
                    f"{record.spec.latency_budget_ms:g} ms; pick one from GET /v1/jobs/{job_id}/pareto"
                )
            cand: Candidate = result.recommended
        else:
            by_id = {c.candidate_id: c for c in [*result.pareto, *([result.tier0] if result.tier0 else [])]}
            if candidate_id not in by_id:
                raise CandidateNotFound(
                    f"candidate '{candidate_id}' is not on the Pareto front of job '{job_id}' "
                    f"(candidates: {', '.join(by_id) or 'none'})"
                )
            cand = by_id[candidate_id]
        files = job_files(self.settings.job_dir(job_id))
        path = files.candidate(cand.candidate_id)
        delivered = files.model
        if result.recommended is not None and cand.candidate_id == result.recommended.candidate_id and (
            delivered.is_file()
        ):  # the recommended candidate's file is what the job delivered (its weights may be fine-tuned)
            path = delivered
        if not path.is_file():
            raise CandidateNotFound(
                f"candidate '{cand.candidate_id}' of job '{job_id}' has no exported model "
                "(only candidates the search exported and verified have one)"
            )
        return ModelFile(path, f"nasprune-{record.spec.space}-{cand.candidate_id}.onnx", self._etag(path))

    def _etag(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._etags:
                return self._etags[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        etag = f'"{h.hexdigest()[:32]}"'
        with self._lock:
            self._etags[key] = etag
        return etag

    def close(self) -> None:
        self.trials_reader.close()
