"""Durable jobs: the store (SQLite or PostgreSQL), the status life cycle and the worker pool."""

from services.jobs.errors import (
    CandidateNotFound,
    InvalidRequest,
    JobAlreadyFinished,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
    JobServiceError,
    QueueFull,
    SchemaError,
)
from services.jobs.status import JobStatus
from services.jobs.store import JobRecord, JobStore
from services.jobs.worker import Runner, WorkerPool

__all__ = [
    "CandidateNotFound",
    "InvalidRequest",
    "JobAlreadyFinished",
    "JobHasNoResult",
    "JobNotFinished",
    "JobNotFound",
    "JobRecord",
    "JobServiceError",
    "JobStatus",
    "JobStore",
    "QueueFull",
    "Runner",
    "SchemaError",
    "WorkerPool",
]
