"""What the routes do, free of HTTP: submit, read, cancel jobs; read trials, fronts and model files."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from nasprune.search.job import Candidate, SearchResult
from nasprune.settings import Settings
from services.api.catalog import Catalog
from services.api.schemas import JobCreate, TrialPublic, finite_or_none
from services.jobs.errors import (
    BudgetUnreachable,
    CandidateNotFound,
    InvalidRequest,
    JobHasNoResult,
    JobNotFinished,
)
from services.jobs.status import JobStatus
from services.jobs.store import JobRecord, JobStore
from services.jobs.worker import WorkerPool

MODELS_DIR = "models"
STATUS_CACHE_S = 0.2


def model_path(output_dir: Path, candidate_id: str) -> Path:
    """Where the search writes the ONNX file of a Pareto candidate: ``<job dir>/models/<candidate_id>.onnx``."""
    return output_dir / MODELS_DIR / f"{candidate_id}.onnx"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    filename: str
    etag: str


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
                constraints=finite_or_none(list(t.system_attrs.get("constraints") or [])) or None,
                started_at=t.datetime_start,
                completed_at=t.datetime_complete,
            )
            for t in trials[offset : offset + limit]
        ]
        return len(trials), items

    def close(self) -> None:
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()


class JobService:
    """The service's operations. Finished jobs never change, so their parsed results are kept (LRU)."""

    def __init__(self, settings: Settings, store: JobStore, pool: WorkerPool | None, catalog: Catalog):
        self.settings = settings
        self.store = store
        self.pool = pool
        self.catalog = catalog
        self.trials_reader = TrialReader(settings.trial_storage_url)
        self._results: OrderedDict[str, SearchResult] = OrderedDict()
        self._etags: dict[tuple[str, int, int], str] = {}
        self._recent: dict[str, tuple[float, JobRecord]] = {}
        self._lock = threading.Lock()

    # jobs -----------------------------------------------------------------------------------------

    def submit(self, body: JobCreate) -> JobRecord:
        """Check the request against this server, persist the job, then wake a worker."""
        limit = self.settings.max_trials_per_job
        if body.n_trials > limit:
            raise InvalidRequest("n_trials", f"{body.n_trials} is more than this server allows per job ({limit})")
        self.catalog.check_space(body.space)
        self.catalog.check_device(body.device)
        min_ms = self.catalog.min_latency_ms(body.space, body.device)
        if min_ms is not None and body.latency_budget_ms < min_ms:
            raise BudgetUnreachable(body.latency_budget_ms, min_ms, body.space, body.device)
        spec = body.to_search_job()
        record = self.store.create(spec, max_queued=self.settings.max_queued_jobs)
        if self.pool is not None:
            self.pool.notify()
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        with self._lock:
            if len(self._recent) >= 10_000:
                self._recent.clear()
            self._recent[job_id] = (time.monotonic(), record)
        return record

    def recent(self, job_id: str) -> JobRecord | None:
        """The job as read less than ``STATUS_CACHE_S`` ago, if it was: status polls stay cheap under load."""
        with self._lock:
            hit = self._recent.get(job_id)
        if hit is None or time.monotonic() - hit[0] > STATUS_CACHE_S:
            return None
        return hit[1]

    def list(self, status: JobStatus | None, limit: int, offset: int) -> tuple[int, list[JobRecord]]:
        return self.store.list(status, limit=limit, offset=offset)

    def cancel(self, job_id: str) -> JobRecord:
        record = self.store.request_cancel(job_id)
        with self._lock:
            self._recent.pop(job_id, None)
        if record.status is JobStatus.RUNNING and self.pool is not None:
            self.pool.cancel(job_id)
        return record

    # results --------------------------------------------------------------------------------------

    def trials(self, job_id: str, limit: int, offset: int) -> tuple[int, list[TrialPublic]]:
        self.store.get(job_id)
        return self.trials_reader.page(job_id, limit, offset)

    def result(self, job_id: str) -> tuple[JobRecord, SearchResult]:
        """The job and its search result; ``JobNotFinished`` / ``JobHasNoResult`` otherwise."""
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

    def model_file(self, job_id: str, candidate_id: str | None = None) -> ModelFile:
        """The ONNX file of ``candidate_id``, or of the recommended candidate when None."""
        record, result = self.result(job_id)
        if candidate_id is None:
            if result.recommended is None:
                raise CandidateNotFound(
                    f"job '{job_id}' has no recommended model: no verified candidate's measured latency is within "
                    f"{record.spec.latency_budget_ms:g} ms; pick one from GET /v1/jobs/{job_id}/pareto"
                )
            cand: Candidate = result.recommended
        else:
            by_id = {c.candidate_id: c for c in result.pareto}
            if candidate_id not in by_id:
                raise CandidateNotFound(
                    f"candidate '{candidate_id}' is not on the Pareto front of job '{job_id}' "
                    f"(candidates: {', '.join(by_id) or 'none'})"
                )
            cand = by_id[candidate_id]
        path = model_path(self.settings.job_dir(job_id), cand.candidate_id)
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
