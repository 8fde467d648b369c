"""The Optuna study behind a job: durable trial storage shared by every backend.

A job's trials live in an Optuna RDB storage (SQLite file or PostgreSQL) under the study name
``job_id``. Both backends write the same schema: two objectives (accuracy up, predicted latency
down), constraints set by :class:`~nasprune.search.objective.Objective`, and user attributes
``subnet_key`` and ``metrics``. Reopening a study resumes it: trials left running by a crash are
marked failed, finished ones are kept and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel

from nasprune.db import advisory_lock
from nasprune.search.job import SearchJob

DIRECTIONS = ["maximize", "minimize"]
# What the two objectives are, for optuna.visualization and optuna-dashboard (not "Objective 0/1").
METRIC_NAMES = ["val_accuracy", "predicted_latency_ms"]
log = logging.getLogger(__name__)

# Optuna logs a line per trial (and per study opened) at INFO. A search silences those in its own
# thread only, with a filter on the loggers that write them: ``optuna.logging.set_verbosity`` would
# change Optuna's verbosity for the whole process (other threads, the user's own studies).
_OPTUNA_INFO_LOGGERS = (
    "optuna.study.study",
    "optuna.study._tell",
    "optuna.storages._in_memory",
    "optuna.storages._rdb.storage",
    "optuna.storages.journal._storage",
)
_SEARCHING = threading.local()


class _SearchThreadFilter(logging.Filter):
    """Drops Optuna's INFO records logged by a thread inside :func:`quiet_optuna`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not getattr(_SEARCHING, "depth", 0)


_OPTUNA_FILTER = _SearchThreadFilter()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """No Optuna INFO lines from this thread inside the block (also a decorator); other threads unchanged."""
    for name in _OPTUNA_INFO_LOGGERS:
        logging.getLogger(name).addFilter(_OPTUNA_FILTER)  # the same filter once per logger
    _SEARCHING.depth = getattr(_SEARCHING, "depth", 0) + 1
    try:
        yield
    finally:
        _SEARCHING.depth -= 1


class TrialRecord(BaseModel):
    """One finished trial, as every backend reports it."""

    number: int
    subnet_key: str
    config: dict
    accuracy: float
    latency_ms: float
    params: int
    macs: int
    feasible: bool
    duration_s: float | None = None
    precision: Literal["fp32", "int8"] = "fp32"


JOURNAL_SCHEME = "journal://"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna storage for a URL: ``journal:///path/file`` (an append-only journal file, the fast
    default on one machine), ``sqlite:///...`` or any SQLAlchemy URL (RDB storage; PostgreSQL to
    share trials across machines)."""
    if url.startswith(JOURNAL_SCHEME):
        from optuna.storages.journal import JournalFileBackend

        path = url[len(JOURNAL_SCHEME) :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite"):
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        _sqlite_pragmas(storage.engine)
        return storage
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def journal_url(path: str | Path) -> str:
    return f"{JOURNAL_SCHEME}{Path(path).resolve()}"


def repair_journal(path: str | Path) -> int:
    """Cut a partial last line off a journal file; return the number of bytes cut.

    Optuna appends each write as whole lines under a lock file. A process killed in the middle of
    an append leaves a line without its newline: Optuna skips it while it is last, but the next
    append would join onto it and make every later read of the study fail. Under the same lock the
    writers take (so no append is in flight; a lock left by a killed process is broken after
    Optuna's 30 s grace period), the partial line is dropped: it never was a finished write.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0 or _ends_with_newline(path):
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "r+b") as f:
            size = f.seek(0, 2)
            keep, chunk = size, 1 << 16
            while keep > 0:  # search backwards for the last newline
                start = max(0, keep - chunk)
                f.seek(start)
                block = f.read(keep - start)
                at = block.rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                keep = start
            if keep == size:  # completed by a writer while we waited for the lock
                return 0
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    log.warning("trial journal %s: dropped %d bytes of a write that a crash left unfinished", path, size - keep)
    return size - keep


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


PG_SCHEMA_LOCK = 0x6E617374  # "nast": one PostgreSQL advisory lock id for creating Optuna's schema


def prepare_storage(url: str) -> None:
    """Create the trial storage's schema once, before any job opens it (idempotent).

    Optuna creates its tables (and PostgreSQL enum types) on first use without a lock: two processes
    starting their first jobs at once on a fresh database collide (``duplicate key ...
    studydirection``) and one job fails. On PostgreSQL every nasprune process (``serve``, ``api``,
    ``worker``) takes the same advisory lock first. A journal or SQLite file is opened once (which
    also repairs a journal that a crash left with a partial line).
    """
    if not url.startswith("postgresql"):
        make_storage(url)
        return
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn, advisory_lock(conn, PG_SCHEMA_LOCK):
            make_storage(url).engine.dispose()
    finally:
        engine.dispose()


def _sqlite_pragmas(engine) -> None:
    """WAL and synchronous=NORMAL: several times fewer fsyncs per trial, still crash-safe."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    engine.dispose()  # connections opened while creating the schema get the pragmas next time


def make_sampler(job: SearchJob) -> optuna.samplers.BaseSampler:
    if job.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=job.seed, population_size=20)
    if job.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=job.seed, multivariate=True, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=job.seed)


@quiet_optuna()
def open_study(job: SearchJob, job_id: str, storage_url: str, sampler=None) -> optuna.Study:
    """Create or reopen the study of ``job_id``; fail trials a crashed run left running."""
    study = optuna.create_study(
        study_name=job_id,
        storage=make_storage(storage_url),
        directions=DIRECTIONS,
        sampler=sampler or make_sampler(job),
        load_if_exists=True,
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.info("job %s: trial %d was running when the last run stopped; marking it failed", job_id, t.number)
        study.tell(t.number, state=TrialState.FAIL)
    describe_study(study, job)
    return study


def describe_study(study: optuna.Study, job: SearchJob) -> None:
    """Name the objectives and say what the study searched (user attrs), once per study."""
    if study.metric_names != METRIC_NAMES:
        import warnings

        with warnings.catch_warnings():  # "experimental since Optuna 3.2": the API optuna.visualization reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES)
    attrs = {
        "space": job.space,
        "model": job.model,
        "device": job.device,
        "latency_budget_ms": job.latency_budget_ms,
        "sampler": job.sampler,
        "backend": job.backend,
        "dataset": job.dataset,
    }
    have = study.user_attrs
    for k, v in attrs.items():
        if v is not None and have.get(k) != v:
            study.set_user_attr(k, v)


def trial_constraints(t: FrozenTrial) -> dict[str, float] | None:
    """A trial's constraint values by name (<= 0 is satisfied); None when it has none.

    Optuna 5 stores each ``trial.set_constraint(name, v)`` under the system attr ``constraints:<name>``
    (a study from the deprecated ``constraints_func`` has a list, read as ``"0"``, ``"1"``, ...).
    """
    return dict(t.constraints) or None


def n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def record_of(t: FrozenTrial) -> TrialRecord:
    m = t.user_attrs["metrics"]
    return TrialRecord(
        number=t.number,
        subnet_key=t.user_attrs["subnet_key"],
        config=t.user_attrs["config"],
        duration_s=t.duration.total_seconds() if t.duration else None,
        **m,
    )


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    """Every complete trial, by number."""
    return [record_of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def load_trials(storage_url: str, job_id: str) -> list[TrialRecord]:
    """The complete trials of a job, read straight from storage (for the service and the CLI)."""
    try:
        study = optuna.load_study(study_name=job_id, storage=make_storage(storage_url))
    except KeyError:
        return []
    return trial_records(study)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible, non-dominated trials (Optuna's ``best_trials``), sorted by latency."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))
