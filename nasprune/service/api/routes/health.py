"""``/healthz`` (the process answers) and ``/readyz`` (its database and MLflow answer). No token needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from nasprune.service.api.deps import ServicesDep
from nasprune.service.api.schemas import Health, Readiness
from nasprune.service.jobs.tracking import check_tracking

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="the server process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency does not answer"}},
    summary="the job database and the MLflow tracking store answer",
)
def readyz(services: ServicesDep):
    checks: dict[str, str] = {}
    try:
        services.store.ping()
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unreachable: {type(e).__name__}: {str(e)[:200]}"
    problem = check_tracking(services.tracking_uri)
    checks["mlflow"] = problem or "ok"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return body if ready else JSONResponse(body.model_dump(), status_code=503)
