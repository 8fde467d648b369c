"""The life of a job: ``queued -> running -> succeeded | failed | cancelled``."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finalized(self) -> bool:
        """Whether the job has stopped for good (its row no longer changes)."""
        return self in FINAL

    def can_become(self, other: JobStatus) -> bool:
        return other in TRANSITIONS[self]


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # running -> queued: the worker stopped (shutdown or crash) and the job resumes from its trials.
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, *FINAL}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
