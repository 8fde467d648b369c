"""Dependencies of the routes: the per-app services and the optional bearer-token check.

They never block, so they are ``async``: FastAPI runs sync dependencies in its thread pool, one
hop each, which costs more than they do.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nasprune.settings import Settings
from services.api.catalog import Catalog
from services.api.datasets import DatasetUploads
from services.api.errors import Unauthorized
from services.api.models import ModelStore
from services.api.service import JobService
from services.jobs.store import JobStore
from services.jobs.worker import WorkerPool


@dataclass
class Services:
    """Everything one app instance owns; built by ``create_app`` and kept on ``app.state.services``."""

    settings: Settings
    store: JobStore
    pool: WorkerPool | None
    catalog: Catalog
    jobs: JobService
    tracking_uri: str
    models: ModelStore
    datasets: DatasetUploads


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_jobs(request: Request) -> JobService:
    return request.app.state.services.jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]

_bearer = HTTPBearer(auto_error=False, description="the server's NASPRUNE_API_TOKEN, when one is set")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """When the server has an API token, the request must carry it as ``Authorization: Bearer <token>``."""
    token = request.app.state.services.settings.api_token
    if token is None:
        return
    if credentials is None:
        raise Unauthorized("this server needs an API token: send 'Authorization: Bearer <token>'")
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise Unauthorized("the API token is not valid")
