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

from nasprune.service.api.catalog import Catalog
from nasprune.service.api.datasets import DatasetUploads
from nasprune.service.api.errors import Unauthorized
from nasprune.service.api.models import ModelStore
from nasprune.service.api.service import JobService
from nasprune.service.auth import LOCAL_ADMIN, Forbidden, Principal, UserStore
from nasprune.service.auth.store import UploadClaim
from nasprune.service.jobs.store import JobStore
from nasprune.service.jobs.worker import WorkerPool
from nasprune.settings import Settings


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
    users: UserStore

    @property
    def multi_user(self) -> bool:
        return self.settings.auth == "users"

    def quota(self, who: Principal) -> UploadClaim | None:
        """An upload's claim on ``who``'s storage (users mode), else None (one user, no quota)."""
        return UploadClaim(self.users, who) if self.multi_user and who.name is not None else None


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_jobs(request: Request) -> JobService:
    return request.app.state.services.jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


async def get_principal(request: Request) -> Principal:
    """Who the request acts for: the user of its API key (users mode), else the server's one user (an admin)."""
    principal = request.scope.get("state", {}).get("principal")
    if request.app.state.services.settings.auth == "users":
        if principal is None:  # the gate answers 401 first; this is a second line
            raise Unauthorized("this server needs a user's API key: send 'Authorization: Bearer <key>'")
        return principal
    return LOCAL_ADMIN


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_writer(principal: PrincipalDep) -> Principal:
    """The principal, who must be allowed to change things (not a viewer)."""
    if not principal.can_write:
        raise Forbidden(f"user '{principal.name}' is a viewer: viewers read, they cannot submit, upload or cancel")
    return principal


WriterDep = Annotated[Principal, Depends(get_writer)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden(f"only admins may do this (user '{principal.name}' is a {principal.role.value})")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]

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


_key = HTTPBearer(auto_error=False, description="a user's API key (NASPRUNE_AUTH=users)", scheme_name="APIKey")


async def require_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_key)]
) -> None:
    """Users mode: the gate has resolved the key already; this declares bearer auth in the OpenAPI document."""
    await get_principal(request)
