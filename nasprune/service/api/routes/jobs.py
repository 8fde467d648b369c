"""``/v1/jobs``: submit, list, read and cancel search jobs."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response

from nasprune.service.api.deps import JobsDep, PrincipalDep, WriterDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.schemas import (
    USER_NAME_PATTERN,
    Cancelled,
    ErrorBody,
    JobCreate,
    JobLinks,
    JobList,
    JobPublic,
    JobSubmitted,
)
from nasprune.service.jobs.status import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JsonRoute)

MAX_OFFSET = 2**31 - 1  # an integer every job database takes (SQLite's and PostgreSQL's are 64-bit)
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]


def next_page(path: str, total: int, limit: int, offset: int, **params) -> str | None:
    if offset + limit >= total:
        return None
    query = {k: v for k, v in params.items() if v is not None} | {"limit": limit, "offset": offset + limit}
    return f"{path}?{urlencode(query)}"


ERRORS = {
    401: {"model": ErrorBody, "description": "missing or wrong API token (or key)"},
    404: {"model": ErrorBody, "description": "no such job (or another user's)"},
}
ERRORS[403] = {"model": ErrorBody, "description": "the user's role does not allow this (a viewer changing something)"}


@router.post(
    "",
    status_code=202,
    response_model=JobSubmitted,
    summary="submit a search job",
    responses={
        400: {"model": ErrorBody, "description": "the body is not JSON"},
        401: ERRORS[401],
        403: ERRORS[403],
        422: {"model": ErrorBody, "description": "invalid request, unknown space/device, or unreachable budget"},
        429: {"model": ErrorBody, "description": "the queue is full, or the user's quota of queued jobs; retry later"},
    },
)
async def submit(body: JobCreate, jobs: JobsDep, response: Response, who: WriterDep) -> JobSubmitted:
    record = await jobs.submit_in_thread(body, who)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    warnings = []  # an uploaded model's table is built by its first job
    if body.model is None:
        warnings = jobs.catalog.budget_warnings(body.space, body.device, body.latency_budget_ms)
    links = JobLinks.of(record, jobs.settings.tracking_uri)
    return JobSubmitted(id=record.id, status=record.status, links=links, warnings=warnings)


@router.get("", response_model=JobList, summary="list jobs, newest first", responses={401: ERRORS[401]})
def list_jobs(
    jobs: JobsDep,
    who: PrincipalDep,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    user: Annotated[
        str | None, Query(pattern=USER_NAME_PATTERN, description="only this user's jobs (of those the caller sees)")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobList:
    total, records = jobs.list(status, limit, offset, who, user)
    return JobList(
        items=[JobPublic.of(r, jobs.settings.tracking_uri) for r in records],
        total=total,
        limit=limit,
        offset=offset,
        next=next_page("/v1/jobs", total, limit, offset, status=status.value if status else None, user=user),
    )


@router.get("/{job_id}", response_model=JobPublic, summary="status, progress and best so far", responses=ERRORS)
async def get_job(job_id: str, jobs: JobsDep, who: PrincipalDep) -> Response:
    # The hottest route: answered on the event loop from a cache (at most 0.2 s old) of the encoded
    # JobPublic, so pollers neither queue for the thread pool nor pay for validation and serialisation.
    return Response(await jobs.recent_status(job_id, who), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    response_model=Cancelled,
    summary="cancel a job (a running one stops at its next trial and keeps its trials)",
    responses={
        **ERRORS,
        202: {"model": Cancelled, "description": "running: the job stops at its next trial"},
        403: ERRORS[403],
        409: {"model": ErrorBody, "description": "the job has already finished"},
    },
)
def cancel_job(job_id: str, jobs: JobsDep, response: Response, who: WriterDep) -> Cancelled:
    record = jobs.cancel(job_id, who)
    if record.status is JobStatus.RUNNING:
        response.status_code = 202
        message = "cancellation requested; the job stops at its next trial and keeps the trials it finished"
    else:
        message = "cancelled"
    return Cancelled(id=record.id, status=record.status, cancel_requested=True, message=message)
