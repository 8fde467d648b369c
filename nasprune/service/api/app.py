"""``create_app(settings)``: the API, its job store, worker pool and catalog, built per call (no globals)."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from nasprune.paths import models_dir
from nasprune.search.study import prepare_storage
from nasprune.service.api import errors, openapi
from nasprune.service.api.catalog import Catalog, warm_imports
from nasprune.service.api.datasets import DatasetUploads
from nasprune.service.api.deps import Services, require_key, require_token
from nasprune.service.api.edge import MAX_BODY_BYTES, BodyLimit, TokenGate
from nasprune.service.api.mlflow_proxy import Forwarder, MlflowProxy
from nasprune.service.api.models import ModelStore
from nasprune.service.api.routes import catalog, datasets, health, jobs, models, results, users
from nasprune.service.api.service import JobService
from nasprune.service.auth import UserStore
from nasprune.service.jobs.store import JobStore
from nasprune.service.jobs.worker import Runner, WorkerPool
from nasprune.settings import Settings

REQUEST_THREADS = 8

DESCRIPTION = """
Find the fastest, most accurate pruned subnetwork of a model for a latency budget.

Submit a job (`POST /v1/jobs`), watch it (`GET /v1/jobs/{id}`, or the MLflow run it links to),
read the Pareto front (`GET /v1/jobs/{id}/pareto`) and download the recommended ONNX model
(`GET /v1/jobs/{id}/model`). When the server has an API token, send it as `Authorization: Bearer`.
"""


def _token(settings: Settings) -> str | None:
    return None if settings.api_token is None else settings.api_token.get_secret_value()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nasprune")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: Settings | None = None,
    runner: Runner | None = None,
    *,
    start_workers: bool = True,
    mlflow: MlflowProxy | None = None,
) -> FastAPI:
    """The service for ``settings`` (default: from ``NASPRUNE_*``).

    Migrates the job database and creates the trial storage's schema. With ``start_workers`` the
    app runs jobs in its own worker pool (``runner`` replaces the real search, for tests); without,
    it only queues them for workers elsewhere on the same database. With ``mlflow`` it serves that
    MLflow server under ``/mlflow``, behind the API token when one is set (admins only with users).
    """
    settings = (settings or Settings()).prepare()
    store = JobStore(settings.db_url)
    store.migrate()
    prepare_storage(settings.trial_storage_url)  # Optuna's schema, once, under a lock on PostgreSQL
    tracking_uri = settings.effective_tracking_uri
    pool = WorkerPool(store, settings, runner, tracking_uri=tracking_uri) if start_workers else None
    cat = Catalog(settings)
    forwarder = Forwarder(mlflow) if mlflow is not None else None
    user_store = UserStore(store.engine, default_storage_bytes=settings.user_max_storage_bytes)
    services = Services(
        settings=settings,
        store=store,
        pool=pool,
        catalog=cat,
        jobs=JobService(settings, store, pool, cat, user_store),
        tracking_uri=tracking_uri,
        models=ModelStore(models_dir(settings.data_dir), MAX_BODY_BYTES),
        datasets=DatasetUploads(settings.data_dir, MAX_BODY_BYTES),
        users=user_store,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Few request threads: routes are short, and many runnable threads contending for the GIL
        # turn 1 ms requests into tens of ms at the tail.
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        threading.Thread(target=warm_imports, name="warm-up", daemon=True).start()
        if pool is not None:
            await run_in_threadpool(pool.start)
        try:
            yield
        finally:
            try:
                if pool is not None:
                    await run_in_threadpool(pool.stop)
                services.jobs.close()
                if forwarder is not None:
                    await forwarder.aclose()
            finally:
                store.close()  # whatever failed before, the job store's connections are released

    app = FastAPI(title="nasprune", version=_version(), description=DESCRIPTION, lifespan=lifespan)
    app.state.services = services
    errors.install(app)
    openapi.install(app, settings)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    # Outermost: a request without the token is answered before its body is read or parsed.
    app.add_middleware(
        TokenGate,
        token=lambda: _token(services.settings),
        internal=mlflow.internal_secret if mlflow else None,
        authenticate=user_store.authenticate if settings.auth == "users" else None,
    )
    app.include_router(health.router)
    if forwarder is not None:
        app.include_router(forwarder.router())
    # The dependency checks the token again and declares bearer auth in the OpenAPI document: only
    # on a server that has a token.
    auth = [Depends(require_token)] if settings.api_token is not None else []
    if settings.auth == "users":
        auth = [Depends(require_key)]
    for router in (jobs.router, results.router, catalog.router, models.router, datasets.router, users.router):
        app.include_router(router, prefix="/v1", dependencies=auth)
    return app
