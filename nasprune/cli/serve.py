"""``nasprune serve``: the API and its worker pool, plus an MLflow server unless one is configured."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the search service (API, job workers, MLflow server)",
        description=(
            "Serve the nasprune API. Jobs run in this process's worker pool and their trials stream into "
            "MLflow. Without NASPRUNE_TRACKING_URI (or --tracking-uri), a lean MLflow server is started on a "
            "private Unix socket with its store under the data dir, kept up by a supervisor, and served by the "
            "API under /mlflow (behind the API token when one is set). Every option can also be set as "
            "NASPRUNE_<OPTION>."
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
    # The token lives in ``settings`` from here on; no process this one starts (MLflow, a local
    # Ray's workers) needs it, so it leaves the environment they inherit.
    os.environ.pop("NASPRUNE_API_TOKEN", None)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{shown}:{settings.port}"
    with ExitStack() as stack:
        proxy = None
        ui = settings.tracking_uri
        if settings.tracking_uri is None:
            print("starting MLflow server ...", flush=True)
            proxy, tracking_uri = _start_mlflow(stack, settings, base)
            settings = settings.model_copy(update={"tracking_uri": tracking_uri})
            ui = f"{base}/mlflow/"
        app = create_app(settings, mlflow=proxy)
        print(f"nasprune API:  {base}  (API docs: {base}/docs)", flush=True)
        print(f"MLflow UI:     {ui}", flush=True)
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


def _start_mlflow(stack, settings, base: str):
    """A supervised MLflow server on a Unix socket in a private folder, served by the API under /mlflow.

    Returns the proxy and the tracking URI this process's own client uses: the API's /mlflow over
    loopback, with a random secret (not the API token) as its basic-auth password when a token is set.
    """
    import secrets
    import shutil
    import tempfile

    from nasprune.mlflow_server import supervised_mlflow_server
    from services.api.mlflow_proxy import MlflowProxy

    folder = Path(tempfile.mkdtemp(prefix="nasprune-mlflow-"))  # mode 0700; short enough for a socket path
    stack.callback(shutil.rmtree, folder, True)
    stack.enter_context(supervised_mlflow_server(settings.data_dir / "mlflow", socket_path=folder / "sock"))
    secret = secrets.token_urlsafe(32) if settings.api_token is not None else None
    userinfo = f"nasprune:{secret}@" if secret else ""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return MlflowProxy(folder / "sock", secret), f"http://{userinfo}{host}:{port}/mlflow"


class _Stop(Exception):
    pass


def _exit_quietly(signum, frame) -> None:
    raise _Stop()
