"""``nasprune serve``: the API and its worker pool, plus an MLflow server unless one is configured."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the search service (API, job workers, MLflow server)",
        description=(
            "Serve the nasprune API. Jobs run in this process's worker pool and their trials stream into "
            "MLflow. Without NASPRUNE_TRACKING_URI (or --tracking-uri), a lean MLflow server is started with its "
            "store under the data dir and kept up by a supervisor: by default on a private Unix socket, served by "
            "the API under /mlflow (behind the API token when one is set); with --mlflow-port on that fixed "
            "loopback port instead. Job links to MLflow are made when a job is read, from the address MLflow has "
            "now, so they survive a restart on another port. Every option can also be set as NASPRUNE_<OPTION>."
        ),
    )
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, help="jobs, trials, models, tables, MLflow data (default ./.nasprune)")
    p.add_argument("--database-url", help="job store URL (default SQLite in the data dir; postgresql://... to scale)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: start an MLflow server on loopback)")
    p.add_argument(
        "--mlflow-port",
        type=int,
        default=_env_int("NASPRUNE_MLFLOW_PORT"),
        metavar="PORT",
        help="serve the MLflow server this command starts on 127.0.0.1:PORT (its UI and tracking API, "
        "without the API token in front) instead of under the API's /mlflow (default)",
    )
    p.add_argument("--workers", type=int, help="jobs that run at the same time (default 1)")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from contextlib import ExitStack

    from nasprune.service.api.app import create_app
    from nasprune.service.api.server import make_server
    from nasprune.settings import Settings

    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "tracking_uri": args.tracking_uri,
        "workers": args.workers,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None}).prepare()
    problem = _mlflow_port_problem(args.mlflow_port, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The token lives in ``settings`` from here on; no process this one starts (MLflow, a local
    # Ray's workers) needs it, so it leaves the environment they inherit.
    os.environ.pop("NASPRUNE_API_TOKEN", None)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{shown}:{settings.port}"
    with ExitStack() as stack:
        proxy = None
        ui = settings.tracking_uri
        if settings.tracking_uri is None and args.mlflow_port is not None:
            print(f"starting MLflow server on 127.0.0.1:{args.mlflow_port} ...", flush=True)
            ui = _start_mlflow_on_port(stack, settings, args.mlflow_port)
            settings = settings.model_copy(update={"tracking_uri": ui})
        elif settings.tracking_uri is None:
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


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.strip().isdigit() else None


def _mlflow_port_problem(port: int | None, settings) -> str | None:
    """Why ``--mlflow-port`` cannot be used as given, in terms of the command's flags; None when it can."""
    if port is None:
        return None
    if settings.tracking_uri is not None:
        return "--mlflow-port starts nasprune's own MLflow server: leave it out with --tracking-uri"
    if settings.auth == "users":
        return (
            "--mlflow-port would serve MLflow to anyone on this machine, every user's runs included; leave it out "
            "(MLflow is then served under the API's /mlflow, to admins) or run without NASPRUNE_AUTH=users"
        )
    if settings.api_token is not None:
        return (
            "--mlflow-port would serve MLflow without the API token in front of it; leave it out (MLflow is then "
            "served under the API's /mlflow, behind the token) or run without NASPRUNE_API_TOKEN"
        )
    if not 1 <= port <= 65535:
        return f"--mlflow-port {port}: a port is 1 to 65535"
    if port == settings.port:
        return f"--mlflow-port {port} is the API's own port (--port); choose another"
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return f"--mlflow-port {port}: 127.0.0.1:{port} is not free ({e.strerror}); choose another port"
    return None


def _start_mlflow_on_port(stack, settings, port: int) -> str:
    """A supervised MLflow server on 127.0.0.1:``port`` (restarted at the same port); returns its URL."""
    from nasprune.mlflow_server import supervised_mlflow_server

    sup = stack.enter_context(supervised_mlflow_server(settings.data_dir / "mlflow", port=port))
    return sup.url


def _start_mlflow(stack, settings, base: str):
    """A supervised MLflow server on a Unix socket in a private folder, served by the API under /mlflow.

    Returns the proxy and the tracking URI this process's own client uses: the API's /mlflow over
    loopback, with a random secret (not the API token) as its basic-auth password when a token is set.
    """
    import secrets
    import shutil
    import tempfile

    from nasprune.mlflow_server import supervised_mlflow_server
    from nasprune.service.api.mlflow_proxy import MlflowProxy

    folder = Path(tempfile.mkdtemp(prefix="nasprune-mlflow-"))  # mode 0700; short enough for a socket path
    stack.callback(shutil.rmtree, folder, True)
    stack.enter_context(supervised_mlflow_server(settings.data_dir / "mlflow", socket_path=folder / "sock"))
    secret = secrets.token_urlsafe(32) if settings.api_token is not None or settings.auth == "users" else None
    userinfo = f"nasprune:{secret}@" if secret else ""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return MlflowProxy(folder / "sock", secret), f"http://{userinfo}{host}:{port}/mlflow"


class _Stop(Exception):
    pass


def _exit_quietly(signum, frame) -> None:
    raise _Stop()
