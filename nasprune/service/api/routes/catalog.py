"""``/v1/spaces`` and ``/v1/devices``: what a job can ask for."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from nasprune.service.api.catalog import BUILTIN_DEVICE
from nasprune.service.api.deps import PrincipalDep, ServicesDep, WriterDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.routes.jobs import ERRORS
from nasprune.service.api.schemas import DEVICE_NAME_PATTERN, DevicePublic, ErrorBody, SpacePublic

router = APIRouter(tags=["catalog"], route_class=JsonRoute)


@router.get(
    "/spaces", response_model=list[SpacePublic], summary="registered search spaces", responses={401: ERRORS[401]}
)
def spaces(services: ServicesDep, who: PrincipalDep) -> list[SpacePublic]:
    return services.catalog.spaces(services.jobs.hidden_from("device", who))


@router.get(
    "/devices", response_model=list[DevicePublic], summary="devices with a latency table", responses={401: ERRORS[401]}
)
def devices(services: ServicesDep, who: PrincipalDep) -> list[DevicePublic]:
    return services.catalog.devices(services.jobs.hidden_from("device", who))


@router.post(
    "/devices",
    status_code=201,
    response_model=DevicePublic,
    summary="upload a latency table measured on your own device",
    responses={
        401: ERRORS[401],
        403: ERRORS[403],
        409: {"model": ErrorBody, "description": "the device name belongs to another user"},
        413: {"model": ErrorBody, "description": "the table is too large"},
        422: {"model": ErrorBody, "description": "not a valid latency table, or a bad device name"},
    },
)
def upload_device(
    services: ServicesDep,
    who: WriterDep,
    name: Annotated[str, Query(pattern=DEVICE_NAME_PATTERN, description="the device's name in job requests")],
    table: Annotated[Any, Body(description="the latency table JSON, as written by 'nasprune lut build'")],
) -> DevicePublic:
    users = services.users if services.multi_user else None
    claimed = False
    if users is not None and name != BUILTIN_DEVICE:  # owned before it is written: never visible to others
        claimed = users.claim_name("device", name, who, exists=name in services.catalog.device_names())
    try:
        device = services.catalog.save_device(name, table)
    except Exception:
        if claimed:
            users.release("device", name, who.name)
        raise
    services.jobs.audit(who, "device.upload", f"device:{name}")
    return device
