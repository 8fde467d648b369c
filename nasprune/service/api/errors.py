"""One place that turns errors into HTTP answers, so routes stay free of try/except.

Every error answer is JSON ``{"detail": <sentence>, "code": <name>, "errors": [...]?}``.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nasprune.errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DatasetError,
    DatasetNameTaken,
    GraphError,
    LatencyTableError,
    NasPruneError,
    SpaceError,
)
from nasprune.service.auth.errors import Forbidden, KeyNotFound, NameTaken, SingleTokenMode, UserExists, UserNotFound
from nasprune.service.jobs.errors import (
    BudgetUnreachable,
    CandidateNotFound,
    InvalidRequest,
    JobAlreadyFinished,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
    QueueFull,
    QuotaExceeded,
    SchemaError,
    StorageQuotaExceeded,
)

log = logging.getLogger(__name__)


class ModelNotFound(GraphError):
    def __init__(self, model_id: str):
        super().__init__(
            f"no model with id '{model_id}' (upload one with POST /v1/models; list them with GET /v1/models)"
        )


class DatasetNotFound(DatasetError):
    def __init__(self, name: str):
        super().__init__(f"no dataset named '{name}' (list them with GET /v1/datasets; add one with POST /v1/datasets)")


class Unauthorized(NasPruneError):
    """The request lacks the server's API token, or carries a wrong one."""


class PayloadTooLarge(NasPruneError):
    pass


class BodyTooLarge(StarletteHTTPException):
    """Raised by ``edge.BodyLimit`` from ``receive`` once the bytes read pass the limit.

    An ``HTTPException`` so that FastAPI's body reading passes it on as it is (it turns other
    exceptions into a generic 400); answered 413 ``payload_too_large``.
    """

    def __init__(self, limit: int, why: str):
        super().__init__(
            413, f"the request body is larger than this server accepts ({limit // 2**20} MiB, {limit} bytes): {why}"
        )


class UnsupportedMediaType(NasPruneError):
    """A JSON route was sent a body of another media type."""


# Most specific first: the first class in an error's MRO found here decides.
STATUS: dict[type[Exception], tuple[int, str]] = {
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    UserNotFound: (404, "user_not_found"),
    KeyNotFound: (404, "key_not_found"),
    UserExists: (409, "user_exists"),
    NameTaken: (409, "name_taken"),
    SingleTokenMode: (409, "single_token_mode"),
    StorageQuotaExceeded: (413, "quota_exceeded"),
    QuotaExceeded: (429, "quota_exceeded"),
    ModelNotFound: (404, "model_not_found"),
    DatasetNotFound: (404, "dataset_not_found"),
    DatasetNameTaken: (409, "dataset_exists"),
    JobNotFound: (404, "job_not_found"),
    CandidateNotFound: (404, "candidate_not_found"),
    JobNotFinished: (409, "job_not_finished"),
    JobHasNoResult: (409, "job_has_no_result"),
    JobAlreadyFinished: (409, "job_already_finished"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    BudgetUnreachable: (422, "budget_unreachable"),
    InvalidRequest: (422, "invalid_request"),
    QueueFull: (429, "queue_full"),
    SchemaError: (503, "schema_error"),
    SpaceError: (422, "space_error"),
    ConfigError: (422, "config_error"),
    BudgetError: (422, "budget_error"),
    LatencyTableError: (422, "latency_table_error"),
    DatasetError: (422, "dataset_error"),
    GraphError: (422, "model_error"),
    CheckpointError: (500, "checkpoint_error"),
    NasPruneError: (400, "bad_request"),
}


def status_of(exc: Exception) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "internal_error"


def _error(status: int, code: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"detail": detail, "code": code, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _domain(request: Request, exc: NasPruneError) -> JSONResponse:
    status, code = status_of(exc)
    headers = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, QueueFull):
        headers = {"Retry-After": "30"}
    errors = None
    if isinstance(exc, InvalidRequest):
        errors = [{"field": exc.field, "message": exc.message, "type": code}]
    quota = {"limit": exc.limit, "current": exc.current} if isinstance(exc, QuotaExceeded) else {}
    return _error(
        status, code, str(exc), headers, errors=errors, min_latency_ms=getattr(exc, "min_latency_ms", None), **quota
    )


def _show(value: object) -> str:
    """A short, JSON-safe rendering of an offending input (NaN and infinities included)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    status = 422
    for e in exc.errors():
        kind = e.get("type", "")
        field = _field(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if kind == "json_invalid":
            status = 400
            ctx = e.get("ctx") or {}
            field, msg = "body", f"is not valid JSON ({ctx.get('error', 'parse error')})"
        elif kind == "missing" and field == "body":
            msg = "is required: send a JSON object (Content-Type: application/json)"
        elif kind == "model_attributes_type" and field == "body":
            msg = f"must be a JSON object, not {_show(e.get('input'))}"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif "input" in e and kind not in ("missing", "extra_forbidden"):
            msg = f"{msg} (got {_show(e['input'])})"
        errors.append({"field": field, "message": msg, "type": kind})
    detail = "; ".join(f"{x['field']}: {x['message']}" for x in errors) or "invalid request"
    code = "invalid_json" if status == 400 else "validation_error"
    return _error(status, code, detail, errors=errors)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, BodyTooLarge):
        return _error(413, "payload_too_large", exc.detail)
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path} (see /docs for the API)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path} (see /docs for the API)"
    return _error(exc.status_code, "http_error", str(detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error(500, "internal_error", f"internal error ({type(exc).__name__}); the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(NasPruneError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
