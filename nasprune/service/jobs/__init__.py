"""Durable jobs: the store (SQLite or PostgreSQL), the status life cycle and the worker pool."""

from nasprune.service.jobs.errors import (
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
from nasprune.service.jobs.status import JobStatus
from nasprune.service.jobs.store import JobRecord, JobStore
from nasprune.service.jobs.worker import Runner, WorkerPool

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
