"""``StatusCache``: the refresh-ahead cache that job status polls are answered from."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio.to_thread

STATUS_CACHE_S = 0.2  # a job's status is never answered from a read older than this
STATUS_REFRESH_S = 0.1  # ... and is read again, in the background, once the last read is this old


class StatusCache:
    """Recent answers of ``read(job_id)`` (encoded status JSON), for the many pollers of a few jobs.

    An answer is served while its read is less than ``STATUS_CACHE_S`` old; once it is older than
    ``STATUS_REFRESH_S`` the next poll starts a new read in a worker thread and is still answered from
    the cache, so pollers seldom wait for the database. Polls that must wait (nothing recent) share
    one read. ``forget(job_id)`` (the job changed) drops the answer, and reads that began before it.
    ``get`` runs on the event loop; ``forget`` may be called from any thread. Ages are measured
    with ``clock`` (monotonic seconds; tests pass their own and move it).
    """

    MAX_JOBS = 10_000

    def __init__(
        self,
        read: Callable[[str], bytes],
        *,
        max_age_s: float | None = None,
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read = read
        self._max_age_s = STATUS_CACHE_S if max_age_s is None else max_age_s
        self._refresh_s = STATUS_REFRESH_S if refresh_s is None else refresh_s
        self._now = clock
        self._answers: dict[str, tuple[float, bytes]] = {}  # job id -> (when its read began, body)
        self._reading: dict[str, tuple[int, asyncio.Future[bytes]]] = {}  # reads in flight (event loop only)
        self._forgotten: dict[str, int] = {}  # job id -> clock when last forgotten
        self._floor = 0  # reads that began before this clock are stale (``_forgotten`` was cleared)
        self._clock = 0
        self._lock = threading.Lock()

    async def get(self, job_id: str) -> bytes:
        hit = self._answers.get(job_id)  # one dict read is atomic; writers hold the lock
        if hit is not None:
            read_at, body = hit
            age = self._now() - read_at
            if age < self._max_age_s:
                if age >= self._refresh_s:
                    self._start_read(job_id)
                return body
        return await asyncio.shield(self._start_read(job_id))

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._clock += 1
            if len(self._forgotten) >= self.MAX_JOBS:
                self._floor = self._clock  # before the clear: the event loop reads both without the lock
                self._forgotten.clear()
            self._forgotten[job_id] = self._clock
            self._answers.pop(job_id, None)

    def _stale(self, job_id: str, clock: int) -> bool:
        """Whether ``job_id`` changed after a read that began at ``clock``."""
        return clock < self._floor or self._forgotten.get(job_id, 0) > clock

    def _start_read(self, job_id: str) -> asyncio.Future[bytes]:
        reading = self._reading.get(job_id)
        if reading is not None and not self._stale(job_id, reading[0]):
            return reading[1]
        clock = self._clock
        future = asyncio.ensure_future(anyio.to_thread.run_sync(self._read_and_keep, job_id, clock))
        self._reading[job_id] = (clock, future)
        future.add_done_callback(lambda done: self._read_done(job_id, done))
        return future

    def _read_and_keep(self, job_id: str, clock: int) -> bytes:
        read_at = self._now()
        body = self._read(job_id)
        with self._lock:
            if not self._stale(job_id, clock):
                if len(self._answers) >= self.MAX_JOBS:
                    self._answers.clear()
                self._answers[job_id] = (read_at, body)
        return body

    def _read_done(self, job_id: str, done: asyncio.Future[bytes]) -> None:
        reading = self._reading.get(job_id)
        if reading is not None and reading[1] is done:
            del self._reading[job_id]
        if not done.cancelled():
            done.exception()  # retrieved: a background read has no awaiter (the next poll reads again)
