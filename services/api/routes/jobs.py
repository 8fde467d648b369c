"""``/v1/jobs``: submit, list, read and cancel search jobs."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from services.api.deps import JobsDep
from services.api.schemas import (
    Best,
    Cancelled,
    ErrorBody,
    JobCreate,
    JobLinks,
    JobList,
    JobPublic,
    JobSubmitted,
)
from services.jobs.status import JobStatus
from services.jobs.store import JobRecord

router = APIRouter(prefix="/jobs", tags=["jobs"])

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]


def links(record: JobRecord) -> JobLinks:
    base = f"/v1/jobs/{record.id}"
    return JobLinks(
        self=base,
        cancel=f"{base}/cancel",
        trials=f"{base}/trials",
        pareto=f"{base}/pareto",
        model=f"{base}/model",
        mlflow=record.mlflow_run_url,
    )


def public(record: JobRecord) -> JobPublic:
    p = record.progress
    best = None
    if p is not None and (p.best_accuracy is not None or p.best_latency_ms is not None):
        best = Best(accuracy=p.best_accuracy, latency_ms=p.best_latency_ms)
    return JobPublic(
        id=record.id,
        status=record.status,
        spec=record.spec,
        progress=p,
        best=best,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        error=record.error,
        tracking_error=record.tracking_error,
        mlflow_run_id=record.mlflow_run_id,
        mlflow_run_url=record.mlflow_run_url,
        links=links(record),
    )


def next_page(path: str, total: int, limit: int, offset: int, **params) -> str | None:
    if offset + limit >= total:
        return None
    query = {k: v for k, v in params.items() if v is not None} | {"limit": limit, "offset": offset + limit}
    return f"{path}?{urlencode(query)}"


ERRORS = {
    401: {"model": ErrorBody, "description": "missing or wrong API token"},
    404: {"model": ErrorBody, "description": "no such job"},
}


@router.post(
    "",
    status_code=202,
    response_model=JobSubmitted,
    summary="submit a search job",
    responses={
        400: {"model": ErrorBody, "description": "the body is not JSON"},
        401: ERRORS[401],
        422: {"model": ErrorBody, "description": "invalid request, unknown space/device, or unreachable budget"},
        429: {"model": ErrorBody, "description": "the queue is full; retry later"},
    },
)
def submit(body: JobCreate, jobs: JobsDep, response: Response) -> JobSubmitted:
    record = jobs.submit(body)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return JobSubmitted(id=record.id, status=record.status, links=links(record))


@router.get("", response_model=JobList, summary="list jobs, newest first", responses={401: ERRORS[401]})
def list_jobs(
    jobs: JobsDep,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobList:
    total, records = jobs.list(status, limit, offset)
    return JobList(
        items=[public(r) for r in records],
        total=total,
        limit=limit,
        offset=offset,
        next=next_page("/v1/jobs", total, limit, offset, status=status.value if status else None),
    )


@router.get("/{job_id}", response_model=JobPublic, summary="status, progress and best so far", responses=ERRORS)
async def get_job(job_id: str, jobs: JobsDep) -> JobPublic:
    # The status poll is the hottest route: answered from a 0.2 s cache on the event loop when it
    # can be, so that many pollers do not queue for the thread pool; the database read runs there.
    record = jobs.recent(job_id) or await run_in_threadpool(jobs.get, job_id)
    return public(record)


@router.post(
    "/{job_id}/cancel",
    response_model=Cancelled,
    summary="cancel a job (a running one stops at its next trial and keeps its trials)",
    responses={
        **ERRORS,
        202: {"model": Cancelled, "description": "running: the job stops at its next trial"},
        409: {"model": ErrorBody, "description": "the job has already finished"},
    },
)
def cancel_job(job_id: str, jobs: JobsDep, response: Response) -> Cancelled:
    record = jobs.cancel(job_id)
    if record.status is JobStatus.RUNNING:
        response.status_code = 202
        message = "cancellation requested; the job stops at its next trial and keeps the trials it finished"
    else:
        message = "cancelled"
    return Cancelled(id=record.id, status=record.status, cancel_requested=True, message=message)
