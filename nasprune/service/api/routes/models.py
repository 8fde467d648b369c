"""``/v1/models``: upload a torchvision architecture's trained weights; jobs then name the model id."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request

from nasprune.service.api.deps import PrincipalDep, ServicesDep, WriterDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.models import MODEL_ID_PATTERN
from nasprune.service.api.routes.jobs import ERRORS
from nasprune.service.api.schemas import ErrorBody, ModelPublic

router = APIRouter(tags=["models"], route_class=JsonRoute)

BINARY_BODY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
SHAPE_PATTERN = r"^[1-9][0-9]{0,4}(,[1-9][0-9]{0,4}){0,2}$"


@router.post(
    "/models",
    status_code=201,
    response_model=ModelPublic,
    summary="upload trained weights (safetensors) for a torchvision architecture",
    description=(
        "The body is the weights file itself (`Content-Type: application/octet-stream`), as written by "
        "`safetensors.torch.save_file(model.state_dict(), ...)`; pickles are never read. The weights must "
        "fit the architecture built with `num_classes` (a mismatch names the first tensor and both shapes). "
        "The model's search space is derived from its graph; submit jobs with `\"model\": ID`."
    ),
    responses={
        401: ERRORS[401],
        403: ERRORS[403],
        413: {"model": ErrorBody, "description": "the weights file is larger than the server accepts, or the quota"},
        422: {"model": ErrorBody, "description": "unknown architecture, bad weights, or weights that do not fit"},
    },
    openapi_extra={"requestBody": BINARY_BODY},
)
async def upload_model(
    request: Request,
    services: ServicesDep,
    who: WriterDep,
    architecture: Annotated[str, Query(pattern=r"^torchvision:[a-z0-9_]+$", description="e.g. torchvision:resnet18")],
    num_classes: Annotated[int, Query(ge=2, le=100_000)],
    input_shape: Annotated[str, Query(pattern=SHAPE_PATTERN, description="one sample's shape, e.g. 3,32,32")],
    dataset: Annotated[str, Query(pattern=r"^[a-z0-9_]*$", max_length=64, description="checked against")] = "",
) -> ModelPublic:
    store = services.models
    quota = services.quota(who)
    tmp, sha = await store.receive(request.stream(), quota.check_read if quota else None)
    shape = tuple(int(v) for v in input_shape.split(","))
    claimed: list[str] = []

    def admit(model_id: str, n_bytes: int) -> None:
        if quota is not None:
            owned_before = who.name in [user for user, _ in services.users.owners("model", model_id)]
            quota.admit("model", model_id, n_bytes)
            if not owned_before:
                claimed.append(model_id)

    try:
        model = await anyio.to_thread.run_sync(store.add, tmp, sha, architecture, num_classes, shape, dataset, admit)
    except BaseException:
        for model_id in claimed:
            quota.release("model", model_id)
        raise
    services.jobs.audit(who, "model.upload", f"model:{model.id}")
    return model


@router.get("/models", response_model=list[ModelPublic], summary="uploaded models", responses={401: ERRORS[401]})
def list_models(services: ServicesDep, who: PrincipalDep) -> list[ModelPublic]:
    return services.models.list(services.jobs.hidden_from("model", who))


@router.get(
    "/models/{model_id}",
    response_model=ModelPublic,
    summary="one uploaded model",
    responses={401: ERRORS[401], 404: {"model": ErrorBody, "description": "no such model"}},
)
def get_model(
    services: ServicesDep, who: PrincipalDep, model_id: Annotated[str, Path(pattern=MODEL_ID_PATTERN)]
) -> ModelPublic:
    return services.models.get(model_id, services.jobs.hidden_from("model", who))
