"""The two halves of ``nasprune serve`` for a deployment beyond one machine: ``nasprune api`` and ``nasprune worker``.

``serve`` runs the API and a worker pool in one process (and an MLflow server when none is given).
On a cluster the halves scale apart, sharing one PostgreSQL job database (the queue):

- ``nasprune api`` answers HTTP and queues jobs; it never runs one;
- ``nasprune worker`` runs queued jobs (``NASPRUNE_WORKERS`` at a time) and answers only ``/healthz``
  and ``/readyz``, for the orchestrator's probes.

Both read every setting from ``NASPRUNE_*`` (flags override). A worker whose jobs use the ``ray``
backend must run on a node of the Ray cluster (``ray start --address ... --num-cpus 0`` in its
container): Ray drivers attach to a local raylet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    w = sub.add_parser(
        "worker",
        help="run queued search jobs (no HTTP API; health probes only)",
        description=(
            "Take queued jobs from the job database, oldest first, and run them: NASPRUNE_WORKERS at a time. "
            "Any number of workers (and 'nasprune api' servers) may share one PostgreSQL database. Listens on "
            "NASPRUNE_HOST:NASPRUNE_PORT for /healthz and /readyz only. SIGTERM stops running jobs at their next "
            "trial and puts them back in the queue."
        ),
    )
    _common_options(w)
    w.add_argument("--ray-address", help="Ray cluster for jobs with backend=ray (this host must be a Ray node)")
    w.add_argument("--workers", type=int, help="jobs that run at the same time (default 1)")
    w.set_defaults(func=_run_worker)

    a = sub.add_parser(
        "api",
        help="serve the HTTP API only; jobs are run by 'nasprune worker' processes",
        description=(
            "Serve the nasprune API without a worker pool: submissions are stored in the job database and run by "
            "'nasprune worker' processes on the same database. No MLflow server is started: runs are logged to "
            "--tracking-uri (or NASPRUNE_TRACKING_URI), by default a SQLite store in the data dir that only "
            "processes on this machine share; give an MLflow server's URL when workers run elsewhere."
        ),
    )
    _common_options(a)
    a.set_defaults(func=_run_api)


def _common_options(p) -> None:
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, help="jobs, models, tables (default ./.nasprune; shared with the API)")
    p.add_argument("--database-url", help="job store URL (postgresql://... to share it; default SQLite)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $NASPRUNE_TRACKING_URI, else the SQLite store <data dir>/mlflow/mlflow.db; "
        "no MLflow server is started)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")


def _settings(args, **extra):
    from nasprune.settings import Settings

    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "tracking_uri": args.tracking_uri,
        **extra,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None}).prepare()


def _print_settings(role: str, settings) -> None:
    print(f"nasprune {role}:  http://{settings.host}:{settings.port}", flush=True)
    print(f"job database:  {_redact(settings.db_url)}", flush=True)
    print(f"MLflow:        {settings.effective_tracking_uri}", flush=True)
    print(f"data dir:      {settings.data_dir.resolve()}", flush=True)


def _redact(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run_api(args) -> int:
    from nasprune.service.api.app import create_app
    from nasprune.service.api.server import make_server

    settings = _settings(args)
    app = create_app(settings, start_workers=False)  # also prepares the trial storage
    _print_settings("API", settings)
    make_server(app, settings.host, settings.port, access_log=not args.no_access_log).run()
    return 0


def _import_search_stack() -> None:
    """Import what a job needs now, not when the first job starts: a cold import of torch, onnx and
    the search takes seconds, long enough to hold up this worker's heartbeats."""
    import nasprune.export
    import nasprune.latency.table
    import nasprune.search.optuna_backend
    import nasprune.search.runner
    import nasprune.train  # noqa: F401


@dataclass
class _Probes:
    """What the health routes read from ``app.state.services``: the job store and the tracking URI."""

    store: object
    tracking_uri: str


def worker_app(settings, runner=None):
    """A FastAPI app that runs a :class:`~nasprune.service.jobs.worker.WorkerPool` for its lifetime and serves
    ``/healthz`` and ``/readyz`` (the API's own health routes, on the worker's store)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from nasprune.search.study import prepare_storage
    from nasprune.service.api.routes import health
    from nasprune.service.jobs.store import JobStore
    from nasprune.service.jobs.worker import WorkerPool
    from nasprune.settings import is_sqlite

    store = JobStore(settings.db_url)
    store.migrate()
    prepare_storage(settings.trial_storage_url)
    tracking_uri = settings.effective_tracking_uri
    pool = WorkerPool(store, settings, runner, tracking_uri=tracking_uri)
    if is_sqlite(settings.db_url):
        log.warning("the job store is SQLite: run one worker process per data dir (use PostgreSQL to run more)")

    @asynccontextmanager
    async def lifespan(_app):
        recovered = await run_in_threadpool(pool.start)
        if recovered:
            log.info("re-queued %d job(s) left running: %s", len(recovered), recovered)
        try:
            yield
        finally:
            await run_in_threadpool(pool.stop)
            store.close()

    app = FastAPI(title="nasprune worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = _Probes(store=store, tracking_uri=tracking_uri)
    app.state.pool = pool
    app.include_router(health.router)
    return app


def _run_worker(args) -> int:
    from nasprune.service.api.server import make_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = _settings(args, ray_address=args.ray_address, workers=args.workers)
    _import_search_stack()
    app = worker_app(settings)
    _print_settings("worker", settings)
    print(f"Ray cluster:   {settings.ray_address or 'none (ray jobs start a local Ray)'}", flush=True)
    print(f"workers:       {settings.workers} job(s) at a time", flush=True)
    make_server(app, settings.host, settings.port, access_log=not args.no_access_log).run()
    return 0
