"""A lean, real ``mlflow server`` on loopback: SQLite store and local artifacts under the data dir.

``nasprune serve`` uses it when no tracking URI is configured. Lean means one worker and MLflow's
own job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): about 0.5 GB and ~5 s to ready
instead of ~3 GB. It binds 127.0.0.1 only; MLflow answers 403 to Host headers other than loopback
or private addresses, so its UI is for this machine (or an SSH tunnel).

``nasprune serve`` binds it to a Unix socket instead (``socket_path``) in a folder only its user can
enter, and serves it through the API under ``/mlflow`` (``nasprune/service/api/mlflow_proxy.py``): no TCP
port to reach it by, and the API's token guards it. The server's environment holds no secret of the
service (``NASPRUNE_*`` variables and MLflow client credentials are left out).

:class:`Supervisor` keeps a server up: when its process dies it takes down what is left of its
process group (the uvicorn process MLflow starts outlives a killed ``mlflow server``) and starts it
again at the same address, with a bounded exponential back-off.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from nasprune.errors import NasPruneError

log = logging.getLogger(__name__)

STATIC_PREFIX = "/mlflow"
# Variables the server never needs: the service's own settings (the API token among them) and the
# credentials MLflow *clients* send.
_NOT_FOR_THE_SERVER = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class MlflowServerError(NasPruneError):
    """The MLflow server could not be started."""


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the service's settings and secrets, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_") and k not in _NOT_FOR_THE_SERVER}
    return {**env, **(extra or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: SIGTERM the server when the process that started it dies, even by SIGKILL (no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _mlflow_executable() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


@dataclass
class MlflowServer:
    """A running server; ``url`` is both the tracking URI and the UI address (over ``socket_path`` when set)."""

    url: str
    process: subprocess.Popen
    log_path: Path
    socket_path: Path | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def transport(self):
        """An httpx transport that reaches the server (its Unix socket, or TCP)."""
        import httpx

        return httpx.HTTPTransport(uds=str(self.socket_path)) if self.socket_path else httpx.HTTPTransport()

    def healthy(self, timeout_s: float = 2.0) -> bool:
        import httpx

        try:
            with httpx.Client(transport=self.transport(), timeout=timeout_s) as c:
                return c.get(f"{self.url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the server's process group (MLflow starts uvicorn in it), SIGKILL to what lingers.

        The group is stopped even when the ``mlflow server`` process itself is gone already: its
        uvicorn process would otherwise keep serving.
        """
        pgid = self.process.pid  # started in its own session: the group id is its pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait(5)
        deadline = time.monotonic() + timeout_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_leftovers(pid_file: Path) -> None:
    """Stop what a previous server of this data dir left (its parent was killed with SIGKILL)."""
    try:
        pgid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and (b"mlflow" in cmdline or b"uvicorn" in cmdline):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    serve_artifacts: bool = False,
    socket_path: Path | None = None,
) -> list[str]:
    """The ``mlflow server`` command line: one worker; ``deploy/`` runs the same one.

    With ``socket_path`` it listens on that Unix socket only, under the ``/mlflow`` prefix.
    """
    cmd = [
        *_mlflow_executable(),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
    ]
    if serve_artifacts:
        cmd.append("--serve-artifacts")
    cmd = [*cmd, "--host", host, "--port", str(port), "--workers", "1"]
    if socket_path is not None:
        cmd += ["--static-prefix", STATIC_PREFIX, "--uvicorn-opts", f"--uds {socket_path}"]
    return cmd


def start_mlflow_server(
    root: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    socket_path: str | Path | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` and wait until it answers.

    By default its store lives in ``root`` (``mlflow.db``, ``artifacts/``); a database URL and an
    artifact URI (e.g. PostgreSQL and ``s3://...``, with ``env`` for the credentials) put it elsewhere.
    The log is ``root/server.log``. With ``socket_path`` it listens on that Unix socket only (its
    folder should be private to this user) and ``url`` is ``http://localhost/mlflow`` over it.
    """
    root = Path(root).resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    socket_path = Path(socket_path) if socket_path is not None else None
    if socket_path is not None:
        socket_path.unlink(missing_ok=True)
        port = port or 0
        url = f"http://localhost{STATIC_PREFIX}"
    else:
        port = port or free_port(host)
        url = f"http://{host}:{port}"
    remote = artifacts_destination is not None
    cmd = server_command(
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        artifacts_destination or str(root / "artifacts"),
        host,
        port,
        serve_artifacts=remote,
        socket_path=socket_path,
    )
    env = server_environment(env)
    pid_file = root / "server.pgid"
    _stop_leftovers(pid_file)
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    pid_file.write_text(str(proc.pid))
    server = MlflowServer(url, proc, log_path, socket_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            tail = log_path.read_text(errors="replace")[-1500:]
            raise MlflowServerError(f"mlflow server exited with status {proc.returncode}; its log ends:\n{tail}")
        if server.healthy(timeout_s=1.0):
            return server
        time.sleep(0.25)
    server.stop()
    raise MlflowServerError(f"mlflow server did not answer on {url} within {timeout_s:.0f} s (log: {log_path})")


@contextmanager
def mlflow_server(root: str | Path, **kw) -> Iterator[MlflowServer]:
    """``with mlflow_server(data_dir / "mlflow") as srv: ... srv.url ...``; stopped on exit."""
    server = start_mlflow_server(root, **kw)
    try:
        yield server
    finally:
        server.stop()


class Supervisor:
    """Keeps an MLflow server up at one address: ``start()`` starts it and a thread that watches it.

    Every ``check_s`` the thread looks at the server process (which also reaps it, no zombie). When
    it has died, what is left of its process group is stopped and the server is started again at
    the same address (port or socket), after a back-off that doubles from ``min_backoff_s`` up to
    ``max_backoff_s`` and resets once the server has stayed up for ``stable_s``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        check_s: float = 1.0,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        on_event: Callable[[str], None] | None = None,
        **start_kw,
    ):
        self.root = Path(root)
        self.check_s = check_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        self._kw = start_kw
        self.server: MlflowServer | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return self.server.url

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def start(self) -> Supervisor:
        self.server = start_mlflow_server(self.root, **self._kw)
        if self.server.socket_path is None:  # the same port on every restart
            self._kw["port"] = int(self.server.url.rsplit(":", 1)[1])
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="mlflow-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.server is not None:
            self.server.stop()

    def _watch(self) -> None:
        backoff = self.min_backoff_s
        up_since = time.monotonic()
        while not self._stop.wait(self.check_s):
            server = self.server
            if server.alive():
                if time.monotonic() - up_since >= self.stable_s:
                    backoff = self.min_backoff_s
                continue
            code = server.process.returncode
            server.stop()  # its uvicorn process outlives it: take the whole group down
            while not self._stop.is_set():
                self.on_event(f"MLflow server is down (it exited with status {code}); restarting it in {backoff:g} s")
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                try:
                    self.server = start_mlflow_server(self.root, **self._kw)
                except Exception as e:  # keep supervising whatever went wrong with this attempt
                    self.on_event(f"MLflow server did not restart: {type(e).__name__}: {str(e)[:300]}")
                    continue
                self.restarts += 1
                up_since = time.monotonic()
                self.on_event(f"MLflow server restarted at {self.server.url} (restart {self.restarts})")
                break


@contextmanager
def supervised_mlflow_server(root: str | Path, **kw) -> Iterator[Supervisor]:
    """An MLflow server kept up by a :class:`Supervisor`; stopped on exit."""
    sup = Supervisor(root, **kw).start()
    try:
        yield sup
    finally:
        sup.stop()
