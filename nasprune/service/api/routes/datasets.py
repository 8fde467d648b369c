"""``/v1/datasets``: upload a dataset file (streamed, size-limited, validated); list and describe datasets."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError

from nasprune.datasets import DatasetInfo, ReadOptions, SplitPolicy
from nasprune.datasets.record import NAME_PATTERN
from nasprune.errors import DatasetError
from nasprune.service.api.datasets import DatasetSummary
from nasprune.service.api.deps import PrincipalDep, ServicesDep, WriterDep
from nasprune.service.api.edge import JsonRoute
from nasprune.service.api.routes.jobs import ERRORS
from nasprune.service.api.schemas import ErrorBody
from nasprune.space import format_validation_error

router = APIRouter(tags=["datasets"], route_class=JsonRoute)

BINARY_BODY = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
SIZE_PATTERN = r"^[1-9][0-9]{0,3},[1-9][0-9]{0,3}$"
SHAPE_PATTERN = r"^[1-9][0-9]{0,6}(,[1-9][0-9]{0,6}){0,2}$"


def _dims(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(v) for v in text.split(","))


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetInfo,
    summary="upload a dataset file (npz, image archive, CSV, Parquet, or a tar of x.npy/y.npy)",
    description=(
        "The body is the file itself (`Content-Type: application/octet-stream`), streamed to disk with a hard "
        "limit on the bytes read. It is validated (shapes, labels, classes with too few samples for the split, "
        "NaN/inf, corrupt images named by file, empty archives, absolute paths / `..` / links in archives) and "
        "stored under `name`, content addressed; nothing is kept when a check fails. With `space`, it must also "
        "fit that space's model (input shape, number of classes). Jobs then name it as `dataset`."
    ),
    responses={
        401: ERRORS[401],
        403: ERRORS[403],
        409: {"model": ErrorBody, "description": "the name is taken"},
        413: {"model": ErrorBody, "description": "the file is larger than the server accepts, or the user's quota"},
        422: {"model": ErrorBody, "description": "the file is not a valid dataset (the message says why)"},
    },
    openapi_extra={"requestBody": BINARY_BODY},
)
async def upload_dataset(
    request: Request,
    services: ServicesDep,
    who: WriterDep,
    name: Annotated[str, Query(pattern=NAME_PATTERN, description="lowercase letters, digits and '_'")],
    format: Annotated[Literal["npz", "images", "csv", "parquet", "npy"], Query(description="the file's format")],
    size: Annotated[str | None, Query(pattern=SIZE_PATTERN, description="images: H,W to resize/crop to")] = None,
    mode: Annotated[Literal["L", "RGB"], Query(description="images: grayscale or RGB")] = "L",
    label_column: Annotated[str, Query(max_length=200, description="csv/parquet: the label column")] = "label",
    input_shape: Annotated[str | None, Query(pattern=SHAPE_PATTERN, description="reshape, e.g. 1,28,28")] = None,
    val: Annotated[float, Query(gt=0, lt=0.5, description="validation fraction (stratified split)")] = 0.1,
    test: Annotated[float, Query(gt=0, lt=0.5, description="test fraction (stratified split)")] = 0.2,
    calib: Annotated[int, Query(ge=1, le=100_000, description="train samples for BatchNorm recalibration")] = 500,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    space: Annotated[str | None, Query(pattern=r"^[a-z0-9_]+$", max_length=64, description="check the fit")] = None,
) -> DatasetInfo:
    uploads = services.datasets
    if format == "images" and size is None:
        raise DatasetError("images need a declared size: pass size=H,W (e.g. size=32,32)")
    if space is not None:
        services.catalog.check_space(space)
    try:
        policy = SplitPolicy(val=val, test=test, calib=calib, seed=seed)
    except ValidationError as e:
        raise DatasetError(f"split policy: {format_validation_error(e)}") from None
    options = ReadOptions(size=_dims(size), mode=mode, label_column=label_column, input_shape=_dims(input_shape))
    quota = services.quota(who)
    tmp = await uploads.receive(name, format, request.stream(), quota.check_read if quota else None)
    admit = (lambda info: quota.admit("dataset", name, info.n_bytes)) if quota else None
    try:
        info = await anyio.to_thread.run_sync(uploads.add, tmp, name, format, options, policy, space, admit)
    except BaseException:
        if quota is not None:  # the name was free when the upload began, so whatever was claimed is this one's
            quota.release("dataset", name)
        raise
    services.jobs.audit(who, "dataset.upload", f"dataset:{name}", f"{info.n_bytes} bytes")
    return info


@router.get(
    "/datasets",
    response_model=list[DatasetSummary],
    summary="built-in and uploaded datasets",
    responses={401: ERRORS[401]},
)
def list_datasets(services: ServicesDep, who: PrincipalDep) -> list[DatasetSummary]:
    return services.datasets.list(services.jobs.hidden_from("dataset", who))


@router.get(
    "/datasets/{name}",
    response_model=DatasetInfo,
    summary="one dataset's record: shape, layout, classes, split sizes and class balance, normalisation, hash",
    responses={401: ERRORS[401], 404: {"model": ErrorBody, "description": "no such dataset"}},
)
def get_dataset(
    services: ServicesDep, who: PrincipalDep, name: Annotated[str, Path(pattern=NAME_PATTERN)]
) -> DatasetInfo:
    return services.datasets.get(name, services.jobs.hidden_from("dataset", who))
