"""Running the app under uvicorn: in the foreground (``nasprune serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def make_server(app: FastAPI, host: str, port: int, *, access_log: bool = True, log_level: str = "info"):
    config = uvicorn.Config(
        app, host=host, port=port, access_log=access_log, log_level=log_level, lifespan="on", timeout_keep_alive=30
    )
    return uvicorn.Server(config)


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0, log_level: str = "warning"
) -> Iterator[str]:
    """Serve ``app`` on ``host`` (a free port when 0) in a background thread; yields the base URL."""
    server = make_server(app, host, port, access_log=False, log_level=log_level)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {timeout_s:.0f} s")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    bound_port = sock.getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
