"""``/v1/users``, ``/v1/keys``, ``/v1/audit`` (admins) and ``/v1/me`` (anyone): accounts of a shared service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from nasprune.service.api.deps import AdminDep, PrincipalDep, ServicesDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.routes.jobs import ERRORS, Limit, Offset, next_page
from nasprune.service.api.schemas import (
    USER_NAME_PATTERN,
    AuditList,
    AuditPublic,
    ErrorBody,
    KeyCreate,
    KeyIssued,
    KeyPublic,
    Me,
    Usage,
    UserCreate,
    UserPatch,
    UserPublic,
)
from nasprune.service.auth import SingleTokenMode, User
from nasprune.service.auth.store import ApiKey
from nasprune.service.jobs.status import JobStatus

router = APIRouter(tags=["users"], route_class=JsonRoute)

ADMIN = {
    401: ERRORS[401],
    403: ERRORS[403],
    409: {"model": ErrorBody, "description": "single-token mode (no users), or the user exists already"},
}
UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN)]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


def _users(services: ServicesDep):
    if not services.multi_user:
        raise SingleTokenMode()
    return services.users


def _public(services, user: User, usage: bool = False) -> UserPublic:
    use = None
    if usage:
        use = Usage(
            running=services.store.count_of(user.name, JobStatus.RUNNING),
            queued=services.store.count_of(user.name, JobStatus.QUEUED),
            storage_bytes=services.users.storage_used(user.name),
        )
    return UserPublic(
        name=user.name,
        role=user.role.value,
        team=user.team,
        disabled=user.disabled,
        max_running=user.max_running,
        max_queued=user.max_queued,
        max_storage_bytes=user.max_storage_bytes,
        priority=user.priority,
        created_at=user.created_at,
        usage=use,
    )


def _key(key: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=key.id,
        user=key.user,
        label=key.label,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


@router.get("/me", response_model=Me, summary="who this request acts for", responses={401: ERRORS[401]})
def me(services: ServicesDep, who: PrincipalDep) -> Me:
    return Me(mode=services.settings.auth, name=who.name, role=who.role.value, team=who.team)


@router.post("/users", status_code=201, response_model=UserPublic, summary="add a user (admins)", responses=ADMIN)
def add_user(body: UserCreate, services: ServicesDep, who: AdminDep) -> UserPublic:
    users = _users(services)
    limits = body.model_dump(include={"max_running", "max_queued", "max_storage_bytes", "priority"})
    user = users.add_user(body.name, body.role, body.team, **limits)
    services.jobs.audit(who, "user.add", f"user:{user.name}", f"role={user.role.value} team={user.team}")
    return _public(services, user)


@router.get("/users", response_model=list[UserPublic], summary="users and their use (admins)", responses=ADMIN)
def list_users(services: ServicesDep, who: AdminDep) -> list[UserPublic]:
    return [_public(services, u, usage=True) for u in _users(services).list_users()]


@router.get(
    "/users/{name}",
    response_model=UserPublic,
    summary="one user, with running and queued jobs and stored bytes (admins)",
    responses={**ADMIN, 404: {"model": ErrorBody, "description": "no such user"}},
)
def get_user(name: UserName, services: ServicesDep, who: AdminDep) -> UserPublic:
    return _public(services, _users(services).get_user(name), usage=True)


@router.patch(
    "/users/{name}",
    response_model=UserPublic,
    summary="change a user's role, team, limits or priority, or disable them (admins)",
    responses={**ADMIN, 404: {"model": ErrorBody, "description": "no such user"}},
)
def update_user(name: UserName, body: UserPatch, services: ServicesDep, who: AdminDep) -> UserPublic:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("team", "") is None:
        del changes["team"]
    user = _users(services).update_user(name, **changes)
    services.jobs.audit(who, "user.update", f"user:{name}", ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))
    return _public(services, user, usage=True)


@router.post(
    "/users/{name}/keys",
    status_code=201,
    response_model=KeyIssued,
    summary="issue an API key for a user; the key is in this answer only (admins)",
    responses={**ADMIN, 404: {"model": ErrorBody, "description": "no such user"}},
)
def create_key(name: UserName, services: ServicesDep, who: AdminDep, body: KeyCreate | None = None) -> KeyIssued:
    record, key = _users(services).create_key(name, body.label if body else None)
    services.jobs.audit(who, "key.create", f"key:{record.id}", f"user={name}")
    return KeyIssued(**_key(record).model_dump(), key=key)


@router.get(
    "/users/{name}/keys",
    response_model=list[KeyPublic],
    summary="a user's keys, without the keys themselves (admins)",
    responses={**ADMIN, 404: {"model": ErrorBody, "description": "no such user"}},
)
def list_keys(name: UserName, services: ServicesDep, who: AdminDep) -> list[KeyPublic]:
    return [_key(k) for k in _users(services).list_keys(name)]


@router.delete(
    "/keys/{key_id}",
    response_model=KeyPublic,
    summary="revoke a key: it stops working at once, in every API process (admins)",
    responses={**ADMIN, 404: {"model": ErrorBody, "description": "no such key"}},
)
def revoke_key(key_id: KeyId, services: ServicesDep, who: AdminDep) -> KeyPublic:
    key = _users(services).revoke_key(key_id)
    services.jobs.audit(who, "key.revoke", f"key:{key_id}", f"user={key.user}")
    return _key(key)


@router.get(
    "/audit",
    response_model=AuditList,
    summary="who did what, newest first (admins)",
    responses={401: ERRORS[401], 403: ERRORS[403]},
)
def read_audit(
    services: ServicesDep,
    who: AdminDep,
    user: Annotated[str | None, Query(pattern=USER_NAME_PATTERN, description="only this user's actions")] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z_.]{1,32}$", description="e.g. job.submit")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditList:
    total, entries = services.users.read_audit(user=user, action=action, limit=limit, offset=offset)
    return AuditList(
        items=[
            AuditPublic(id=e.id, at=e.at, user=e.user, action=e.action, target=e.target, detail=e.detail)
            for e in entries
        ],
        total=total,
        limit=limit,
        offset=offset,
        next=next_page("/v1/audit", total, limit, offset, user=user, action=action),
    )
