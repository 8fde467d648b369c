"""A real uvicorn server on loopback around ``create_app`` for the tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from nasprune.service.api.app import create_app
from nasprune.service.api.server import serve_in_thread
from nasprune.settings import Settings


@contextmanager
def running(settings: Settings, runner=None, **kw) -> Iterator[tuple[httpx.Client, object]]:
    """``(client, app)`` for a server on a free 127.0.0.1 port; stopped (workers included) on exit."""
    app = create_app(settings, runner, **kw)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client, app


def wait_for(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout_s: float = 20.0, until=None) -> dict:
    """Poll the job until its status is one of ``statuses`` (and ``until(job)`` holds, if given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses and (until is None or until(job)):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['status']}, not {statuses}, after {timeout_s} s: {job}")
        time.sleep(0.05)
