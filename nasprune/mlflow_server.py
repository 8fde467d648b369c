"""A lean, real ``mlflow server`` on loopback: SQLite store and local artifacts under the data dir.

``nasprune serve`` uses it when no tracking URI is configured. Lean means one worker and MLflow's
own job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): about 0.5 GB and ~5 s to ready
instead of ~3 GB. It binds 127.0.0.1 only; MLflow answers 403 to Host headers other than loopback
or private addresses, so its UI is for this machine (or an SSH tunnel).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nasprune.errors import NasPruneError


class MlflowServerError(NasPruneError):
    """The MLflow server could not be started."""


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
    """A running server; ``url`` is both the tracking URI and the UI address."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the server's process group (it forks a uvicorn worker), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def server_command(
    backend_store_uri: str, artifacts_destination: str, host: str, port: int, serve_artifacts: bool = False
) -> list[str]:
    """The ``mlflow server`` command line: one worker; ``deploy/`` runs the same one."""
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
    return [*cmd, "--host", host, "--port", str(port), "--workers", "1"]


def start_mlflow_server(
    root: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` and wait until it answers.

    By default its store lives in ``root`` (``mlflow.db``, ``artifacts/``); a database URL and an
    artifact URI (e.g. PostgreSQL and ``s3://...``, with ``env`` for the credentials) put it elsewhere.
    The log is ``root/server.log``.
    """
    import httpx

    root = Path(root).resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    remote = artifacts_destination is not None
    cmd = server_command(
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        artifacts_destination or str(root / "artifacts"),
        host,
        port,
        serve_artifacts=remote,
    )
    env = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
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
    server = MlflowServer(url, proc, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise MlflowServerError(f"mlflow server exited with status {proc.returncode}; its log ends:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
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
