"""The durable job store: one SQLAlchemy table, the same code on SQLite and PostgreSQL.

The table is also the queue: workers claim the next queued job with a compare-and-set update
(``... WHERE status = 'queued'``), so any number of worker threads or processes can share it; the
next job is chosen by fair share across users (``claim_next``), in submission order within a user.
The schema is versioned with Alembic (``migrations/``), applied by ``JobStore.migrate()`` at start-up
under a lock, so upgrading nasprune upgrades an existing database.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
import sqlalchemy.orm  # imported here: SQLAlchemy's lazy import of it from worker threads can race
from sqlalchemy.engine import Connection, Engine

from nasprune.db import advisory_lock
from nasprune.search.job import Progress, SearchJob, SearchResult
from nasprune.service.jobs.errors import JobAlreadyFinished, JobNotFound, QueueFull, QuotaExceeded, SchemaError
from nasprune.service.jobs.status import JobStatus

VERSION_TABLE = "nasprune_schema_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6E617370  # "nasp": one advisory lock id for every nasprune process


class UTCDateTime(sa.TypeDecorator):
    """Stored as naive UTC (portable across SQLite and PostgreSQL), returned timezone-aware."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

jobs = sa.Table(
    "nasprune_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.Text(), nullable=False),
    sa.Column("progress", sa.Text()),
    sa.Column("result", sa.Text()),
    sa.Column("error", sa.Text()),
    sa.Column("tracking_error", sa.Text()),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("mlflow_run_url", sa.Text()),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime()),
    sa.Column("finished_at", UTCDateTime()),
    sa.Column("owner", sa.String(128)),
    sa.Column("heartbeat_at", UTCDateTime()),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("updated_at", UTCDateTime()),
    sa.Column("user_name", sa.String(64)),
    sa.Column("team", sa.String(64)),
    sa.Index("ix_nasprune_jobs_status_created", "status", "created_at"),
    sa.Index("ix_nasprune_jobs_user_status", "user_name", "status"),
)

# The users' scheduling settings (the table is ``nasprune.service.auth.store.users``; only these columns are read here).
_users = sa.table("nasprune_users", sa.column("name"), sa.column("max_running"), sa.column("priority"))
RECENT_START = timedelta(days=1)  # how far back "who was served last" looks

_SUMMARY_COLS = [c for c in jobs.c if c.name != "result"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid4().hex


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. ``result_json`` is loaded only when asked for (``get(..., with_result=True)``)."""

    id: str
    status: JobStatus
    spec: SearchJob
    progress: Progress | None
    error: str | None
    tracking_error: str | None
    mlflow_run_id: str | None
    mlflow_run_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    owner: str | None
    heartbeat_at: datetime | None
    attempts: int
    cancel_requested: bool
    has_result: bool
    result_json: str | None = None
    user_name: str | None = None
    team: str | None = None

    @property
    def result(self) -> SearchResult | None:
        return None if self.result_json is None else SearchResult.model_validate_json(self.result_json)

    @classmethod
    def from_row(cls, row: sa.Row, has_result: bool | None = None) -> JobRecord:
        m = row._mapping
        result_json = m.get("result")
        return cls(
            id=m["id"],
            status=JobStatus(m["status"]),
            spec=SearchJob.model_validate_json(m["spec"]),
            progress=Progress.model_validate_json(m["progress"]) if m["progress"] else None,
            error=m["error"],
            tracking_error=m["tracking_error"],
            mlflow_run_id=m["mlflow_run_id"],
            mlflow_run_url=m["mlflow_run_url"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            updated_at=m["updated_at"],
            owner=m["owner"],
            heartbeat_at=m["heartbeat_at"],
            attempts=m["attempts"],
            cancel_requested=bool(m["cancel_requested"]),
            has_result=bool(m["has_result"]) if has_result is None else has_result,
            result_json=result_json,
            user_name=m.get("user_name"),
            team=m.get("team"),
        )


def _lock_key(text: str) -> int:
    return 0x6E730000 + zlib.crc32(text.encode()) % 0xFFFF


@contextmanager
def serialized(engine: Engine, name: str) -> Iterator[Connection]:
    """A transaction that no other holder of the same ``name`` runs at the same time, in any process.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: ``BEGIN IMMEDIATE`` takes the database's
    write lock before the first read, so a count and the insert it guards cannot interleave.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            with conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(name)})
                yield conn
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer and the writer never blocks readers (status polls stay fast).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and wait on a busy lock (``?timeout=`` in the URL)."""
    kw: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kw["connect_args"] = {"check_same_thread": False}
        engine = sa.create_engine(url, **kw)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kw.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
    return sa.create_engine(url, **kw)


class JobStore:
    """Jobs in a database. Thread-safe; every method is one short transaction.

    Changes of state are guarded updates (``WHERE status = <expected>``), so two processes racing
    for the same job cannot both win, and a worker that lost its job (it was re-queued after a
    missed heartbeat) cannot overwrite the new owner's state.
    """

    def __init__(self, url: str, *, engine: Engine | None = None):
        self.url = url
        self.engine = engine or make_engine(url)
        self._submit_lock = threading.Lock()
        if url.startswith("sqlite"):
            db = sa.engine.make_url(url).database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)

    # schema --------------------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        """Create or upgrade the schema to ``revision``; refuses a database newer than this code."""
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
        with self.engine.connect() as conn, advisory_lock(conn, _PG_MIGRATION_LOCK):
            current = self._current_revision(conn)
            if current is not None and current not in known:
                raise SchemaError(
                    f"the job database is at schema version '{current}', which this nasprune does not "
                    f"know (it knows {', '.join(sorted(known))}); upgrade nasprune or use another database"
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()

    def schema_version(self) -> str | None:
        with self.engine.connect() as conn:
            return self._current_revision(conn)

    @staticmethod
    def _current_revision(conn: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # reading -------------------------------------------------------------------------------------

    def get(self, job_id: str, *, with_result: bool = False) -> JobRecord:
        cols = [*jobs.c] if with_result else [*_SUMMARY_COLS, jobs.c.result.isnot(None).label("has_result")]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*cols).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.from_row(row, has_result=row._mapping["result"] is not None if with_result else None)

    def list(
        self,
        status: JobStatus | Iterable[JobStatus] | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        visible_to: tuple[str | None, str | None] | None = None,
        user: str | None = None,
    ) -> tuple[int, list[JobRecord]]:
        """``(total, page)``: jobs newest first, optionally only those with the given status(es).

        ``visible_to=(user, team)`` keeps the jobs of ``user`` and those shared with ``team`` (the
        filter is part of the query, so totals and pages count only those); ``user`` keeps that user's.
        """
        cond = sa.true()
        if status is not None:
            wanted = [status] if isinstance(status, JobStatus) else list(status)
            cond = jobs.c.status.in_([s.value for s in wanted])
        if visible_to is not None:
            viewer, team = visible_to
            mine = jobs.c.user_name == viewer if viewer is not None else sa.false()
            shared = jobs.c.team == team if team is not None else sa.false()
            cond = sa.and_(cond, sa.or_(mine, shared))
        if user is not None:
            cond = sa.and_(cond, jobs.c.user_name == user)
        cols = [*_SUMMARY_COLS, jobs.c.result.isnot(None).label("has_result")]
        with self.engine.connect() as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(cond))
            rows = conn.execute(
                sa.select(*cols)
                .where(cond)
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return int(total or 0), [JobRecord.from_row(r) for r in rows]

    def count(self, status: JobStatus) -> int:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == JobStatus(status).value)
            return int(conn.scalar(query) or 0)

    def count_of(self, user: str, status: JobStatus) -> int:
        """``user``'s jobs with ``status``."""
        with self.engine.connect() as conn:
            query = (
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.user_name == user, jobs.c.status == JobStatus(status).value)
            )
            return int(conn.scalar(query) or 0)

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.scalar(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)))

    # writing -------------------------------------------------------------------------------------

    def create(
        self,
        spec: SearchJob,
        *,
        max_queued: int | None = None,
        job_id: str | None = None,
        user: str | None = None,
        team: str | None = None,
        user_max_queued: int | None = None,
    ) -> JobRecord:
        """Persist a new queued job of ``user`` (shared with ``team``); ``QueueFull`` when ``max_queued`` jobs
        are already waiting, ``QuotaExceeded`` when ``user`` has ``user_max_queued`` waiting.

        The global count and the insert are serialised within this process; several API processes on
        one database may overshoot that limit by at most one job each. The user's count and the insert
        are one serialised transaction on the database (an advisory lock on PostgreSQL, the write lock
        on SQLite): no process overshoots a user's quota.
        """
        now = utcnow()
        row = {
            "id": job_id or new_job_id(),
            "status": JobStatus.QUEUED.value,
            "spec": spec.model_dump_json(),
            "progress": Progress(stage="queued", n_total=spec.n_trials).model_dump_json(),
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "cancel_requested": False,
            "user_name": user,
            "team": team,
        }
        with self._submit_lock:
            if max_queued is not None:
                queued = self.count(JobStatus.QUEUED)
                if queued >= max_queued:
                    raise QueueFull(queued, max_queued)
            if user is not None and user_max_queued is not None:
                with serialized(self.engine, f"queue:{user}") as conn:
                    mine = int(
                        conn.scalar(
                            sa.select(sa.func.count())
                            .select_from(jobs)
                            .where(jobs.c.user_name == user, jobs.c.status == JobStatus.QUEUED.value)
                        )
                        or 0
                    )
                    if mine >= user_max_queued:
                        raise QuotaExceeded(
                            f"queued jobs of user '{user}'", user_max_queued, mine, "retry when some have started"
                        )
                    conn.execute(jobs.insert().values(**row))
            else:
                with self.engine.begin() as conn:
                    conn.execute(jobs.insert().values(**row))
        return JobRecord(
            id=row["id"],
            status=JobStatus.QUEUED,
            spec=spec,
            progress=Progress.model_validate_json(row["progress"]),
            error=None,
            tracking_error=None,
            mlflow_run_id=None,
            mlflow_run_url=None,
            created_at=now,
            started_at=None,
            finished_at=None,
            updated_at=now,
            owner=None,
            heartbeat_at=None,
            attempts=0,
            cancel_requested=False,
            has_result=False,
            user_name=user,
            team=team,
        )

    def claim_next(self, owner: str, *, default_max_running: int | None = None) -> JobRecord | None:
        """Take the next queued job for worker ``owner`` (queued -> running); None when nothing may start.

        Fair share across users: the job of the user with the fewest running jobs, then the higher
        priority, then the user served least recently (whose last job started longest ago, or never),
        then the oldest job. With one worker every user has 0 running jobs at each claim, so without the
        third key a user's 40 queued jobs would still go first; with it, users take turns. A user at
        their running limit (``max_running``, else ``default_max_running``) is skipped.
        """
        running = JobStatus.RUNNING.value
        for _ in range(20):
            recent = utcnow() - RECENT_START
            stats = (
                sa.select(
                    jobs.c.user_name.label("user_name"),
                    sa.func.sum(sa.case((jobs.c.status == running, 1), else_=0)).label("running"),
                    sa.func.max(jobs.c.started_at).label("last_start"),
                )
                .where(sa.or_(jobs.c.status == running, jobs.c.started_at >= recent))
                .group_by(jobs.c.user_name)
                .subquery()
            )
            n_running = sa.func.coalesce(stats.c.running, 0)
            limit = sa.func.coalesce(_users.c.max_running, default_max_running)
            query = (
                sa.select(jobs.c.id)
                .select_from(
                    jobs.outerjoin(stats, stats.c.user_name.is_not_distinct_from(jobs.c.user_name)).outerjoin(
                        _users, _users.c.name == jobs.c.user_name
                    )
                )
                .where(jobs.c.status == JobStatus.QUEUED.value, sa.or_(limit.is_(None), n_running < limit))
                .order_by(
                    n_running,
                    sa.func.coalesce(_users.c.priority, 0).desc(),
                    stats.c.last_start.asc().nulls_first(),
                    jobs.c.created_at,
                    jobs.c.id,
                )
                .limit(1)
            )
            with self.engine.begin() as conn:
                job_id = conn.scalar(query)
                if job_id is None:
                    return None
                now = utcnow()
                won = conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                    .values(
                        status=running,
                        owner=owner,
                        started_at=sa.func.coalesce(jobs.c.started_at, now),
                        heartbeat_at=now,
                        updated_at=now,
                        attempts=jobs.c.attempts + 1,
                    )
                ).rowcount
            if won:
                return self.get(job_id)
        return None

    def set_progress(self, job_id: str, progress: Progress, owner: str | None = None) -> bool:
        now = utcnow()
        cond = [jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value]
        if owner is not None:
            cond.append(jobs.c.owner == owner)
        values = {"progress": progress.model_dump_json(), "heartbeat_at": now, "updated_at": now}
        with self.engine.begin() as conn:
            return bool(conn.execute(jobs.update().where(*cond).values(**values)).rowcount)

    def set_tracking(self, job_id: str, run_id: str, url: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(mlflow_run_id=run_id, mlflow_run_url=url))

    def set_tracking_error(self, job_id: str, message: str | None) -> None:
        """What is wrong with a running job's tracking now (shown while it lasts; the result's replaces it)."""
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                .values(tracking_error=message)
            )

    def heartbeat(self, owner: str, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids), jobs.c.owner == owner, jobs.c.status == JobStatus.RUNNING.value)
                .values(heartbeat_at=utcnow())
            )

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        owner: str | None = None,
        result: SearchResult | None = None,
        error: str | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """running -> ``status`` (succeeded, failed or cancelled). False if the job is no longer ours."""
        if not status.is_finalized:
            raise ValueError(f"finish() needs a final status, not {status}")
        now = utcnow()
        values: dict[str, Any] = {"status": status.value, "finished_at": now, "updated_at": now, "error": error}
        if result is not None:
            values["result"] = result.model_dump_json()
            values["tracking_error"] = result.tracking_error
        if progress is not None:
            values["progress"] = progress.model_dump_json()
        cond = [jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value]
        if owner is not None:
            cond.append(jobs.c.owner == owner)
        with self.engine.begin() as conn:
            return bool(conn.execute(jobs.update().where(*cond).values(**values)).rowcount)

    def requeue(self, job_id: str, *, owner: str | None = None, count_attempt: bool = True) -> bool:
        """running -> queued: the job resumes from its stored trials when a worker takes it again.

        ``count_attempt=False`` for an orderly stop (shutdown), so only crashes count toward giving up.
        """
        cond = [jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value]
        if owner is not None:
            cond.append(jobs.c.owner == owner)
        values: dict[str, Any] = {"status": JobStatus.QUEUED.value, "owner": None, "updated_at": utcnow()}
        if not count_attempt:
            values["attempts"] = sa.case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0)
        with self.engine.begin() as conn:
            return bool(conn.execute(jobs.update().where(*cond).values(**values)).rowcount)

    def requeue_stale(self, older_than: timedelta) -> list[str]:
        """Re-queue running jobs whose worker has not sent a heartbeat for ``older_than`` (it crashed)."""
        cutoff = utcnow() - older_than
        with self.engine.connect() as conn:
            ids = conn.scalars(
                sa.select(jobs.c.id).where(
                    jobs.c.status == JobStatus.RUNNING.value,
                    sa.or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at <= cutoff),
                )
            ).all()
        requeued = []
        for job_id in ids:
            with self.engine.begin() as conn:
                n = conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == job_id,
                        jobs.c.status == JobStatus.RUNNING.value,
                        sa.or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at <= cutoff),
                    )
                    .values(status=JobStatus.QUEUED.value, owner=None, updated_at=utcnow())
                ).rowcount
            if n:
                requeued.append(job_id)
        return requeued

    def request_cancel(self, job_id: str) -> JobRecord:
        """Queued jobs are cancelled at once; running ones are flagged and stop at the next trial."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.CANCELLED.value,
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
                    progress=Progress(stage="done", message="cancelled before it started").model_dump_json(),
                )
            )
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                .values(cancel_requested=True, updated_at=now)
            )
        rec = self.get(job_id)
        if rec.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise JobAlreadyFinished(f"job '{job_id}' has already {rec.status.value}; there is nothing to cancel")
        return rec
