"""``StatusCache``: what status polls are answered from (at most ``STATUS_CACHE_S`` old, refreshed ahead)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.api import service
from services.api.service import StatusCache


class Store:
    """Job states; each read returns the state as bytes, optionally after waiting on a gate."""

    def __init__(self):
        self.state = b"queued"
        self.reads = 0
        self.gate: threading.Event | None = None

    def read(self, job_id: str) -> bytes:
        self.reads += 1
        state = self.state
        if self.gate is not None:
            self.gate.wait(5)
        return state


async def settled(cache: StatusCache) -> None:
    """Wait for the reads in flight (refreshes have no poller waiting for them)."""
    await asyncio.gather(*(future for _, future in list(cache._reading.values())), return_exceptions=True)


@pytest.fixture
def short_ttl(monkeypatch):
    monkeypatch.setattr(service, "STATUS_CACHE_S", 0.2)
    monkeypatch.setattr(service, "STATUS_REFRESH_S", 0.1)


def test_answers_from_the_cache_and_refreshes_ahead(short_ttl):
    async def main():
        store = Store()
        cache = StatusCache(store.read)
        assert await cache.get("j") == b"queued" and store.reads == 1
        store.state = b"running"
        assert await cache.get("j") == b"queued" and store.reads == 1  # fresh: no read
        await asyncio.sleep(0.12)
        assert await cache.get("j") == b"queued"  # older than STATUS_REFRESH_S: answered, re-read behind
        await settled(cache)
        assert store.reads == 2 and await cache.get("j") == b"running"

    asyncio.run(main())


def test_never_answers_from_a_read_older_than_the_limit(short_ttl):
    async def main():
        store = Store()
        cache = StatusCache(store.read)
        await cache.get("j")
        store.state = b"running"
        await asyncio.sleep(0.25)
        assert await cache.get("j") == b"running" and store.reads == 2

    asyncio.run(main())


def test_waiting_polls_share_one_read():
    async def main():
        store = Store()
        store.gate = threading.Event()
        cache = StatusCache(store.read)
        polls = [asyncio.ensure_future(cache.get("j")) for _ in range(20)]
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await asyncio.gather(*polls) == [b"queued"] * 20
        assert store.reads == 1

    asyncio.run(main())


def test_forget_drops_the_answer_and_reads_that_began_before():
    async def main():
        store = Store()
        cache = StatusCache(store.read)
        assert await cache.get("j") == b"queued"
        store.state = b"cancelled"
        cache.forget("j")
        assert await cache.get("j") == b"cancelled"

        # A read that began before the change is neither kept nor shared with later polls.
        store.state = b"running"
        cache.forget("j")
        store.gate = threading.Event()
        early = asyncio.ensure_future(cache.get("j"))
        await asyncio.sleep(0.05)  # the read has taken "running"
        store.state = b"succeeded"
        cache.forget("j")  # from a worker thread in the service; any thread may call it
        late = asyncio.ensure_future(cache.get("j"))
        await asyncio.sleep(0.05)
        store.gate.set()
        assert await early == b"running" and await late == b"succeeded"
        assert await cache.get("j") == b"succeeded" and store.reads == 4

    asyncio.run(main())


def test_a_failed_read_reaches_its_pollers_and_is_not_kept():
    async def main():
        calls = []

        def read(job_id: str) -> bytes:
            calls.append(job_id)
            raise KeyError(job_id)

        cache = StatusCache(read)
        with pytest.raises(KeyError):
            await cache.get("nope")
        with pytest.raises(KeyError):
            await cache.get("nope")
        assert calls == ["nope", "nope"]

    asyncio.run(main())


def test_a_slow_poller_does_not_wait_for_a_refresh(short_ttl):
    async def main():
        store = Store()
        cache = StatusCache(store.read)
        await cache.get("j")
        await asyncio.sleep(0.12)
        store.gate = threading.Event()  # the refresh hangs...
        t0 = time.monotonic()
        assert await cache.get("j") == b"queued"
        assert await cache.get("j") == b"queued"  # ...and is not started twice
        assert time.monotonic() - t0 < 0.05
        store.gate.set()
        await settled(cache)
        assert store.reads == 2

    asyncio.run(main())
