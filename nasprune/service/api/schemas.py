"""What the API accepts and returns: one schema family per resource. Database rows are never returned."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from nasprune.search.job import Candidate, Constraints, Progress, SearchJob
from nasprune.service.jobs.status import JobStatus
from nasprune.service.jobs.store import JobRecord

CANDIDATE_ID_PATTERN = r"^[0-9a-f]{16}$"
DEVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


def finite_or_none(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); containers are cleaned recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


# jobs ---------------------------------------------------------------------------------------------

SEED_MAX = 2**32 - 1  # the samplers seed numpy's RandomState, which takes 0 .. 2**32 - 1


class StrictConstraints(Constraints):
    model_config = ConfigDict(extra="forbid", strict=True)


class JobCreate(SearchJob):
    """A search request. ``n_trials`` is also capped by the server's ``max_trials_per_job``.

    Strict at the edge: a number is a JSON number (``true`` and ``"10"`` are refused), an integer a
    JSON integer; the seed is one the samplers take.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"space": "mlp_digits", "device": "local-cpu", "latency_budget_ms": 0.05, "n_trials": 50}]
        },
    )

    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the sampler (0 .. 2**32-1)")
    constraints: StrictConstraints = Field(default_factory=StrictConstraints)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(cls.model_fields)}"
                )
            if data.get("model") is not None:
                if data.get("space") not in (None, data["model"]):
                    raise ValueError("give either 'space' or 'model' (an uploaded model's id), not both")
                data = {**data, "space": data["model"]}  # a model's derived space is named after it
        return data

    @field_validator("latency_budget_ms", mode="before")
    @classmethod
    def _finite_budget(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number of milliseconds, not {v}")
        return v

    def to_search_job(self) -> SearchJob:
        return SearchJob.model_validate(self.model_dump())


class JobLinks(BaseModel):
    self: str
    cancel: str
    trials: str
    pareto: str
    model: str
    mlflow: str | None = None

    @classmethod
    def of(cls, record: JobRecord, tracking_uri: str | None = None) -> JobLinks:
        """The job's links; the MLflow one is made from the service's ``tracking_uri`` now (never stored)."""
        from nasprune.service.jobs.tracking import run_link

        base = f"/v1/jobs/{record.id}"
        return cls(
            self=base,
            cancel=f"{base}/cancel",
            trials=f"{base}/trials",
            pareto=f"{base}/pareto",
            model=f"{base}/model",
            mlflow=run_link(tracking_uri, record.mlflow_run_url),
        )


class JobSubmitted(BaseModel):
    id: str
    status: JobStatus
    links: JobLinks
    warnings: list[str] = Field(
        default_factory=list,
        description="why the accepted request may not do what was meant (e.g. a budget every subnet fits)",
    )


class Best(BaseModel):
    """Best so far while running (from the search's progress), the recommended candidate once done."""

    accuracy: float | None
    latency_ms: float | None


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    spec: SearchJob
    progress: Progress
    best: Best | None
    cancel_requested: bool
    attempts: int = Field(description="times a worker has started this job (more than 1 after a resume)")
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    error: str | None
    tracking_error: str | None
    mlflow_run_id: str | None
    mlflow_run_url: str | None
    links: JobLinks
    user: str | None = Field(None, description="who submitted it (null on a single-token server)")
    team: str | None = Field(None, description="the team it is shared with")

    @field_serializer("progress")
    def _progress(self, p: Progress) -> dict:
        return finite_or_none(p.model_dump())

    @classmethod
    def of(cls, record: JobRecord, tracking_uri: str | None = None) -> JobPublic:
        p = record.progress
        best = None
        if p is not None and (p.best_accuracy is not None or p.best_latency_ms is not None):
            best = Best(accuracy=p.best_accuracy, latency_ms=p.best_latency_ms)
        links = JobLinks.of(record, tracking_uri)
        return cls(
            id=record.id,
            status=record.status,
            spec=record.spec,
            progress=p,
            best=best,
            cancel_requested=record.cancel_requested,
            attempts=record.attempts,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=record.error,
            tracking_error=record.tracking_error,
            mlflow_run_id=record.mlflow_run_id,
            mlflow_run_url=links.mlflow,
            links=links,
            user=record.user_name,
            team=record.team,
        )


class Page(BaseModel):
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, null on the last one")


class JobList(Page):
    items: list[JobPublic]


class Cancelled(BaseModel):
    id: str
    status: JobStatus
    cancel_requested: bool
    message: str


# trials and results -------------------------------------------------------------------------------


class TrialPublic(BaseModel):
    """One Optuna trial of the job (objectives: accuracy up, predicted latency down)."""

    number: int
    state: str
    values: list[float | None] | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    constraints: dict[str, float | None] | None = Field(
        description="constraint values by name (latency_ms, params, macs: value minus limit; <= 0 is satisfied)"
    )
    started_at: AwareDatetime | None
    completed_at: AwareDatetime | None


class TrialList(Page):
    items: list[TrialPublic]


class CandidatePublic(Candidate):
    within_budget: bool = Field(description="measured latency (or predicted, if not measured) within the budget")
    model_url: str


class ParetoFront(BaseModel):
    job_id: str
    status: JobStatus
    latency_budget_ms: float
    n_trials: int
    recommended_id: str | None
    budget_use: float | None = Field(
        description="the recommended model's latency over the budget (measured where verified, else predicted)"
    )
    candidates: list[CandidatePublic]
    tier0: CandidatePublic | None = Field(
        None,
        description="the tier-0 model (pruned to the budget without training, the job's first result) when the job "
        "made one; the recommended model is the more accurate verified one of it and the search's",
    )
    table_error: dict | None
    table_error_in_use: dict | None = Field(
        None,
        description="the latency table's error on this job's own measurements: n, median_ape and max_ape (%) of "
        "its predictions for the candidates measured here",
    )
    table_drift: str | None = Field(
        None,
        description="set when the table's median error on this job's measurements is above 10%: what happened and "
        "the command that rebuilds the table",
    )
    tracking_error: str | None

    @field_serializer("candidates")
    def _clean(self, cs: list[CandidatePublic]) -> list[dict]:
        return [finite_or_none(c.model_dump()) for c in cs]

    @field_serializer("tier0")
    def _clean_tier0(self, c: CandidatePublic | None) -> dict | None:
        return finite_or_none(c.model_dump()) if c is not None else None


# catalog ------------------------------------------------------------------------------------------


class ModelPublic(BaseModel):
    """An uploaded model: a torchvision architecture with the user's weights, and its derived space."""

    id: str = Field(description="name it in a job as 'model'")
    architecture: str
    num_classes: int
    input_shape: list[int]
    dataset: str | None = None
    groups: int = Field(description="channel groups the search chooses widths for")
    depth_sequences: int = Field(description="sequences of skippable residual blocks")
    subnets: float = Field(description="number of distinct subnets")
    kept_full_width: dict[str, str] = Field(description="channel groups kept at full width, and why")
    frozen: list[str] = Field(description="ops the graph analysis could not prune through, with the reason")
    weights_sha256: str | None = None


class LatencyRangePublic(BaseModel):
    """The budgets that make sense for a space on a device: its fastest and slowest subnet's predicted latency.

    A budget below ``min_ms`` is refused; one at or above ``max_ms`` is accepted with a warning (every
    subnet fits). Without a table both are null and ``missing`` says how to build one.
    """

    space: str
    device: str
    min_ms: float | None = Field(description="predicted latency of the fastest subnet (ms, batch 1)")
    max_ms: float | None = Field(description="predicted latency of the slowest subnet (ms, batch 1)")
    missing: str | None = Field(None, description="when there is no table: how to build one")
    precision: str = Field(
        "fp32", description="the candidates' precision (int8 ranges show where an int8 table exists)"
    )


class SpacePublic(BaseModel):
    name: str
    model: str = Field(
        description="the model the space was derived from: a torchvision architecture (torchvision:NAME) "
        "or a factory (PKG.MODULE:FACTORY)"
    )
    dataset: str
    input_shape: list[int]
    num_classes: int
    size: int = Field(description="number of distinct subnets")
    description: str
    latency: list[LatencyRangePublic] = Field(default_factory=list, description="achievable latency per device")


class DevicePublic(BaseModel):
    name: str
    builtin: bool
    description: str
    spaces: list[str] = Field(description="spaces with a usable latency table on this device")
    uploaded_at: AwareDatetime | None = None
    latency: list[LatencyRangePublic] = Field(
        default_factory=list, description="achievable latency per space (every registered space on the built-in device)"
    )


# service ------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` is a sentence for people, ``code`` a stable name for programs."""

    detail: str
    code: str
    errors: list[FieldError] | None = None
    min_latency_ms: float | None = None
    limit: int | None = Field(None, description="quota_exceeded: the quota")
    current: int | None = Field(None, description="quota_exceeded: the current use")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


# users, keys, audit ---------------------------------------------------------------------------------

USER_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
RoleName = Literal["admin", "member", "viewer"]
Count = Annotated[int, Field(ge=0, le=2**62)]


class UserLimits(BaseModel):
    """Per-user limits; null takes the server's default (``NASPRUNE_USER_MAX_*``)."""

    model_config = ConfigDict(extra="forbid")

    max_running: Count | None = Field(None, description="running jobs at a time")
    max_queued: Count | None = Field(None, description="queued jobs at a time")
    max_storage_bytes: Count | None = Field(None, description="bytes of uploaded datasets and models")
    priority: Annotated[int, Field(ge=-1000, le=1000)] = Field(
        0, description="among users with as many running jobs, the higher goes first"
    )


class UserCreate(UserLimits):
    name: str = Field(pattern=USER_NAME_PATTERN, description="a lowercase letter, then a-z 0-9 _ . -")
    role: RoleName = "member"
    team: str | None = Field(None, pattern=USER_NAME_PATTERN, description="members of a team see each other's work")


class UserPatch(BaseModel):
    """Only the fields sent change; ``team: null`` leaves the team."""

    model_config = ConfigDict(extra="forbid")

    role: RoleName | None = None
    team: str | None = Field(None, pattern=USER_NAME_PATTERN)
    disabled: bool | None = Field(None, description="a disabled user's keys stop working at once")
    max_running: Count | None = None
    max_queued: Count | None = None
    max_storage_bytes: Count | None = None
    priority: Annotated[int, Field(ge=-1000, le=1000)] | None = None


class Usage(BaseModel):
    running: int
    queued: int
    storage_bytes: int


class UserPublic(BaseModel):
    name: str
    role: RoleName
    team: str | None
    disabled: bool
    max_running: int | None
    max_queued: int | None
    max_storage_bytes: int | None
    priority: int
    created_at: AwareDatetime
    usage: Usage | None = None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, max_length=128, description="what the key is for")


class KeyPublic(BaseModel):
    id: str
    user: str
    label: str | None
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None
    last_used_at: AwareDatetime | None


class KeyIssued(KeyPublic):
    key: str = Field(description="the API key: shown this once, stored only as a hash")


class Me(BaseModel):
    mode: Literal["token", "users"]
    name: str | None
    role: RoleName
    team: str | None


class AuditPublic(BaseModel):
    id: int
    at: AwareDatetime
    user: str | None
    action: str
    target: str | None
    detail: str | None


class AuditList(Page):
    items: list[AuditPublic]
