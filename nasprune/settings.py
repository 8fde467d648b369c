"""Every setting of the service in one place: environment variables ``NASPRUNE_*`` or keyword arguments.

Embedded defaults run on one machine: the job store is a SQLite file in the data dir, trials go to
an Optuna journal file (``trials.journal``, so trial writes and job-status writes do not contend for one
file lock), and ``nasprune serve`` starts its own MLflow server. Scaling out is a matter of URLs:
a PostgreSQL ``database_url`` holds jobs *and* trials, ``tracking_uri`` names a shared MLflow
server, ``ray_address`` a Ray cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nasprune.paths import DEVICES, JOBS, TRIALS_JOURNAL

SQLITE_TIMEOUT_S = 30.0


def normalize_db_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use the psycopg 3 driver (the one nasprune installs)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_file_url(path: Path) -> str:
    """A SQLite URL that waits for a busy file lock instead of failing at once."""
    return f"sqlite:///{path.resolve()}?timeout={SQLITE_TIMEOUT_S:g}"


class Settings(BaseSettings):
    """The service's settings; see ``docs/api.md`` for the matching environment variables."""

    model_config = SettingsConfigDict(env_prefix="NASPRUNE_", extra="forbid", validate_default=True)

    data_dir: Path = Field(Path(".nasprune"), description="jobs, trials, models, latency tables and MLflow data")
    database_url: str | None = Field(None, description="job store URL; default: SQLite file <data_dir>/nasprune.db")
    trials_url: str | None = Field(
        None,
        description="Optuna trial storage URL; default: the database URL, or <data_dir>/trials.journal with SQLite",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: 'nasprune serve' starts an MLflow server on loopback"
    )
    ray_address: str | None = Field(None, description="Ray cluster address; default: trials run in-process")
    workers: Annotated[int, Field(ge=1, le=64)] = Field(1, description="jobs that run at the same time")
    api_token: SecretStr | None = Field(None, description="when set, every route but /healthz and /readyz needs it")
    auth: Literal["token", "users"] = Field(
        "token",
        description="'token': one user (the API token, or none); 'users': users with their own API keys, "
        "roles, ownership, quotas and fair scheduling (docs/deploy.md)",
    )
    user_max_running: Annotated[int, Field(ge=1)] | None = Field(
        None, description="users mode: running jobs per user unless an admin set the user's own limit (none: no limit)"
    )
    user_max_queued: Annotated[int, Field(ge=1)] | None = Field(
        20, description="users mode: queued jobs per user unless an admin set the user's own limit"
    )
    user_max_storage_bytes: Annotated[int, Field(ge=0)] | None = Field(
        2 * 2**30, description="users mode: bytes of datasets and models per user unless set per user"
    )
    max_trials_per_job: Annotated[int, Field(ge=1, le=100_000)] = 2000
    max_queued_jobs: Annotated[int, Field(ge=1)] = 100
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    heartbeat_s: Annotated[float, Field(gt=0)] = Field(
        5.0, description="how often a worker marks its running jobs alive; a job silent for 3x this is re-queued"
    )
    poll_s: Annotated[float, Field(gt=0)] = Field(1.0, description="how often idle workers look for queued jobs")
    tracking_drain_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        60.0,
        description="how long a finished job waits for an unreachable MLflow server to come back before it gives "
        "up logging what is still queued (and says so in tracking_error)",
    )

    @field_validator("database_url", "trials_url")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        return None if v is None else normalize_db_url(v)

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None or not v.get_secret_value() else v

    @model_validator(mode="after")
    def _one_auth(self) -> Settings:
        if self.auth == "users" and self.api_token is not None:
            raise ValueError(
                "NASPRUNE_AUTH=users takes API keys of users, not the shared NASPRUNE_API_TOKEN: unset the token "
                "(create an admin and a key with 'nasprune users add NAME --role admin')"
            )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or _sqlite_file_url(self.data_dir / "nasprune.db")

    @property
    def trial_storage_url(self) -> str:
        """Where Optuna keeps trials: given, else the job database when it is a server, else an
        append-only journal file in the data dir (several times less overhead per trial than SQLite)."""
        if self.trials_url:
            return self.trials_url
        if not is_sqlite(self.db_url):
            return self.db_url
        from nasprune.search.study import journal_url

        return journal_url(self.data_dir / TRIALS_JOURNAL)

    @property
    def local_tracking_uri(self) -> str:
        """The MLflow store used when no tracking URI is set and no server was started (tests, scripts)."""
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def effective_tracking_uri(self) -> str:
        return self.tracking_uri or self.local_tracking_uri

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / JOBS

    @property
    def devices_dir(self) -> Path:
        """Latency tables uploaded through ``POST /v1/devices``: ``<devices_dir>/<device>/<file>.json``."""
        return self.data_dir / DEVICES

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def prepare(self) -> Settings:
        """Create the data folders; returns self."""
        for d in (self.data_dir, self.jobs_dir, self.devices_dir, self.data_dir / "mlflow"):
            d.mkdir(parents=True, exist_ok=True)
        return self
