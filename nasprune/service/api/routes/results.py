"""``/v1/jobs/{id}/trials``, ``/pareto``, ``/model`` and ``/models/{candidate_id}``: what a job found."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse

from nasprune.service.api.deps import JobsDep, PrincipalDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.routes.jobs import ERRORS, Limit, Offset, next_page
from nasprune.service.api.schemas import CANDIDATE_ID_PATTERN, CandidatePublic, ErrorBody, ParetoFront, TrialList
from nasprune.service.api.service import ModelFile

router = APIRouter(prefix="/jobs", tags=["results"], route_class=JsonRoute)

NOT_FINISHED = {409: {"model": ErrorBody, "description": "the job has not finished (or finished without a result)"}}
ONNX = {
    200: {"content": {"application/octet-stream": {}}, "description": "the ONNX file"},
    304: {"description": "not modified (If-None-Match matched the ETag)"},
}
CandidateId = Annotated[str, Path(pattern=CANDIDATE_ID_PATTERN, description="16 hex digits (a subnet key)")]


@router.get("/{job_id}/trials", response_model=TrialList, summary="the job's trials, in order", responses=ERRORS)
def trials(job_id: str, jobs: JobsDep, who: PrincipalDep, limit: Limit = 100, offset: Offset = 0) -> TrialList:
    total, items = jobs.trials(job_id, limit, offset, who)
    return TrialList(
        items=items,
        total=total,
        limit=limit,
        offset=offset,
        next=next_page(f"/v1/jobs/{job_id}/trials", total, limit, offset),
    )


@router.get(
    "/{job_id}/pareto",
    response_model=ParetoFront,
    summary="the Pareto front: accuracy vs latency, with params, MACs and measured latency",
    responses={**ERRORS, **NOT_FINISHED},
)
def pareto(job_id: str, jobs: JobsDep, who: PrincipalDep) -> ParetoFront:
    record, result = jobs.result(job_id, who)
    budget = record.spec.latency_budget_ms

    def public(c) -> CandidatePublic:
        return CandidatePublic(
            **c.model_dump(),
            within_budget=(c.measured_latency_ms if c.measured_latency_ms is not None else c.latency_ms) <= budget,
            model_url=f"/v1/jobs/{job_id}/models/{c.candidate_id}",
        )

    candidates = [public(c) for c in result.pareto]
    return ParetoFront(
        job_id=job_id,
        status=record.status,
        latency_budget_ms=budget,
        n_trials=result.n_trials,
        recommended_id=result.recommended.candidate_id if result.recommended else None,
        budget_use=result.budget_use,
        candidates=candidates,
        tier0=public(result.tier0) if result.tier0 else None,
        table_error=result.table_error,
        table_error_in_use=result.table_error_in_use,
        table_drift=result.table_drift,
        tracking_error=result.tracking_error,
    )


def _send(model: ModelFile, request: Request) -> Response:
    if model.etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers={"ETag": model.etag})
    return FileResponse(
        model.path, media_type="application/octet-stream", filename=model.filename, headers={"ETag": model.etag}
    )


@router.get(
    "/{job_id}/model",
    response_class=Response,
    summary="the recommended model: most accurate with measured latency within budget",
    responses={**ONNX, **ERRORS, **NOT_FINISHED},
)
def recommended_model(job_id: str, jobs: JobsDep, request: Request, who: PrincipalDep) -> Response:
    return _send(jobs.model_file(job_id, who=who), request)


@router.get(
    "/{job_id}/models/{candidate_id}",
    response_class=Response,
    summary="the ONNX model of one Pareto candidate, or of the tier-0 model (also while the job runs)",
    responses={**ONNX, **ERRORS, **NOT_FINISHED},
)
def candidate_model(
    job_id: str, candidate_id: CandidateId, jobs: JobsDep, request: Request, who: PrincipalDep
) -> Response:
    return _send(jobs.model_file(job_id, candidate_id, who), request)
