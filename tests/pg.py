"""A real, throw-away PostgreSQL server on loopback for the tests.

Finds ``initdb``/``pg_ctl`` (PATH, then Debian's ``/usr/lib/postgresql/*/bin``), installs the OS
package ``postgresql`` with apt when they are missing and we are root, creates a cluster in a
temporary folder, starts it on a free 127.0.0.1 port (as the ``postgres`` user when run as root:
PostgreSQL refuses to run as root) and stops it at the end.

``pg_server`` is the session fixture every test folder shares (imported by ``tests/conftest.py``):
one server per test session, a new database per test through ``create_database()``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "nasprune"


class PostgresUnavailable(RuntimeError):
    pass


def _find_bin() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    return None


def _install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            "PostgreSQL binaries (initdb, pg_ctl) not found and cannot be installed here "
            "(needs root and apt-get); install the 'postgresql' OS package"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    for cmd in (["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"'{' '.join(cmd)}' failed: {proc.stderr.strip()[-500:]}")


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True, timeout=60)
    return "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _find_bin()
    if bindir is None:
        _install()
        bindir = _find_bin()
        if bindir is None:
            raise PostgresUnavailable("installed 'postgresql' but found no initdb")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="nasprune-pg-"))
    data = root / "data"
    if user:
        shutil.chown(root, user=user)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(bindir / args[0]), *args[1:]]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)

    port = _free_port()
    try:
        proc = run("initdb", "-D", str(data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync")
        if proc.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {proc.stderr.strip()[-500:]}")
        opts = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        proc = run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "-t", "60", "start")
        if proc.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stderr.strip()[-300:]} {log[-500:]}")
        try:
            yield PostgresServer(port=port, root=root)
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (installed from the OS packages if missing).

    Skipped when PostgreSQL cannot be had here, except in CI (``CI`` set), where it must be.
    """
    try:
        with postgres_server() as pg:
            yield pg
    except PostgresUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {e}")
        pytest.skip(f"PostgreSQL unavailable: {e}")
