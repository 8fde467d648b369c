"""Errors of the job service. Each says what went wrong and what to do; the API maps them to HTTP."""

from __future__ import annotations

from nasprune.errors import NasPruneError


class JobServiceError(NasPruneError):
    """Base class of the job service's errors."""


class JobNotFound(JobServiceError):
    def __init__(self, job_id: str):
        super().__init__(f"no job with id '{job_id}' (list jobs with GET /v1/jobs)")
        self.job_id = job_id


class JobNotFinished(JobServiceError):
    """The job has no result yet (queued or running)."""

    def __init__(self, job_id: str, status: str):
        super().__init__(f"job '{job_id}' is {status}; its results are available once it has finished")
        self.job_id = job_id
        self.status = status


class JobHasNoResult(JobServiceError):
    """The job has finished without a search result (it failed, or was cancelled before any trial)."""


class JobAlreadyFinished(JobServiceError):
    """A finished job cannot be cancelled (or changed in any other way)."""


class CandidateNotFound(JobServiceError):
    """The candidate id is not on the job's Pareto front, or has no exported model."""


class QueueFull(JobServiceError):
    def __init__(self, queued: int, limit: int):
        super().__init__(
            f"the queue is full ({queued} jobs queued, limit {limit}); retry when some have started "
            "or raise NASPRUNE_MAX_QUEUED_JOBS"
        )
        self.queued = queued
        self.limit = limit


class SchemaError(JobServiceError):
    """The job database has a schema this version of nasprune does not know (it is newer)."""


class InvalidRequest(JobServiceError):
    """A request is well-formed but not acceptable; ``field`` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownDevice(InvalidRequest):
    pass


class UnknownSpace(InvalidRequest):
    pass


class BudgetUnreachable(InvalidRequest):
    def __init__(self, budget_ms: float, min_latency_ms: float, space: str, device: str):
        super().__init__(
            "latency_budget_ms",
            f"{budget_ms:g} ms is below the smallest achievable latency of space '{space}' on device "
            f"'{device}' ({min_latency_ms:.4g} ms); ask for at least that",
        )
        self.min_latency_ms = min_latency_ms


class QuotaExceeded(JobServiceError):
    """A user's quota (running or queued jobs, stored bytes) would be passed; says the limit and the use."""

    def __init__(self, what: str, limit: int, current: int, hint: str = ""):
        super().__init__(
            f"quota exceeded: {what}: the limit is {limit}, current use {current}" + (f"; {hint}" if hint else "")
        )
        self.what = what
        self.limit = limit
        self.current = current


class StorageQuotaExceeded(QuotaExceeded):
    """Stored bytes (datasets and models) past the user's storage quota; nothing of the upload is kept."""
