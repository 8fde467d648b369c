"""``nasprune serve``: the API and its worker pool, plus an MLflow server unless one is configured."""

from __future__ import annotations

import signal
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the search service (API, job workers, MLflow server)",
        description=(
            "Serve the nasprune API. Jobs run in this process's worker pool and their trials stream into "
            "MLflow. Without NASPRUNE_TRACKING_URI (or --tracking-uri), a lean MLflow server is started on "
            "loopback with its store under the data dir. Every option can also be set as NASPRUNE_<OPTION>."
        ),
    )
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, help="jobs, trials, models, tables, MLflow data (default ./.nasprune)")
    p.add_argument("--database-url", help="job store URL (default SQLite in the data dir; postgresql://... to scale)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: start an MLflow server on loopback)")
    p.add_argument("--workers", type=int, help="jobs that run at the same time (default 1)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from contextlib import ExitStack

    from nasprune.mlflow_server import mlflow_server
    from nasprune.settings import Settings
    from services.api.app import create_app
    from services.api.server import make_server

    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "tracking_uri": args.tracking_uri,
        "workers": args.workers,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None}).prepare()
    with ExitStack() as stack:
        if settings.tracking_uri is None:
            print("starting MLflow server ...", flush=True)
            srv = stack.enter_context(mlflow_server(settings.data_dir / "mlflow"))
            settings = settings.model_copy(update={"tracking_uri": srv.url})
        app = create_app(settings)
        shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        base = f"http://{shown}:{settings.port}"
        print(f"nasprune API:  {base}  (API docs: {base}/docs)", flush=True)
        print(f"MLflow UI:     {settings.tracking_uri}", flush=True)
        print(f"data dir:      {settings.data_dir.resolve()}", flush=True)
        server = make_server(app, settings.host, settings.port, access_log=not args.no_access_log)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: turn it into a
        # normal exit so the MLflow server above is stopped too.
        previous = signal.signal(signal.SIGTERM, _exit_quietly)
        try:
            server.run()
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        print("nasprune serve stopped", flush=True)
    return 0


class _Stop(Exception):
    pass


def _exit_quietly(signum, frame) -> None:
    raise _Stop()
