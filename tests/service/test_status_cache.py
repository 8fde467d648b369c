"""``StatusCache``: what status polls are answered from (at most ``max_age_s`` old, refreshed ahead).

Ages come from a clock the tests move by hand, and reads in flight are waited for on events: no
test sleeps to let time pass or hopes a thread got somewhere.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from nasprune.service.api.status_cache import StatusCache
from tests.service.clock import ManualClock

MAX_AGE_S, REFRESH_S = 0.2, 0.1


class Store:
    """Job states; each read returns the state as bytes, optionally after waiting on a gate."""

    def __init__(self):
        self.state = b"queued"
        self.reads = 0
        self.gate: threading.Event | None = None
        self.began = threading.Semaphore(0)  # released as each read has taken its state

    def read(self, job_id: str) -> bytes:
        self.reads += 1
        state = self.state
        self.began.release()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        return state


async def began(store: Store, n: int = 1) -> None:
    """Wait until ``n`` more reads have taken their state."""
    for _ in range(n):
        assert await asyncio.to_thread(store.began.acquire, True, 30), "no read began"


async def settled(cache: StatusCache) -> None:
    """Wait for the reads in flight (refreshes have no poller waiting for them)."""
    await asyncio.gather(*(future for _, future in list(cache._reading.values())), return_exceptions=True)


def make(read, clock: ManualClock) -> StatusCache:
    return StatusCache(read, max_age_s=MAX_AGE_S, refresh_s=REFRESH_S, clock=clock)


def test_answers_from_the_cache_and_refreshes_ahead():
    async def main():
        store, clock = Store(), ManualClock()
        cache = make(store.read, clock)
        assert await cache.get("j") == b"queued" and store.reads == 1
        store.state = b"running"
        clock.advance(REFRESH_S - 0.01)
        assert await cache.get("j") == b"queued" and store.reads == 1  # fresh: no read
        clock.advance(0.01)
        assert await cache.get("j") == b"queued"  # REFRESH_S old: answered, re-read behind
        await settled(cache)
        assert store.reads == 2 and await cache.get("j") == b"running"

    asyncio.run(main())


def test_never_answers_from_a_read_older_than_the_limit():
    async def main():
        store, clock = Store(), ManualClock()
        cache = make(store.read, clock)
        await cache.get("j")
        store.state = b"running"
        clock.advance(MAX_AGE_S)
        assert await cache.get("j") == b"running" and store.reads == 2

    asyncio.run(main())


def test_the_defaults_are_the_module_limits():
    async def main():
        from nasprune.service.api import status_cache

        store, clock = Store(), ManualClock()
        cache = StatusCache(store.read, clock=clock)
        await cache.get("j")
        store.state = b"running"
        clock.advance(status_cache.STATUS_CACHE_S - 0.001)
        assert await cache.get("j") == b"queued"
        await settled(cache)
        clock.advance(status_cache.STATUS_CACHE_S)
        assert await cache.get("j") == b"running"

    asyncio.run(main())


def test_waiting_polls_share_one_read():
    async def main():
        store = Store()
        store.gate = threading.Event()
        cache = make(store.read, ManualClock())
        polls = [asyncio.ensure_future(cache.get("j")) for _ in range(20)]
        await began(store)  # while the read hangs, every poll (scheduled before it) has joined it
        store.gate.set()
        assert await asyncio.gather(*polls) == [b"queued"] * 20
        assert store.reads == 1

    asyncio.run(main())


def test_forget_drops_the_answer_and_reads_that_began_before():
    async def main():
        store = Store()
        cache = make(store.read, ManualClock())
        assert await cache.get("j") == b"queued"
        store.state = b"cancelled"
        cache.forget("j")
        assert await cache.get("j") == b"cancelled"
        await began(store, 2)

        # A read that began before the change is neither kept nor shared with later polls.
        store.state = b"running"
        cache.forget("j")
        store.gate = threading.Event()
        early = asyncio.ensure_future(cache.get("j"))
        await began(store)  # the read has taken "running"
        store.state = b"succeeded"
        cache.forget("j")  # from a worker thread in the service; any thread may call it
        late = asyncio.ensure_future(cache.get("j"))
        await began(store)  # a second read, not a share of the first
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

        cache = make(read, ManualClock())
        with pytest.raises(KeyError):
            await cache.get("nope")
        with pytest.raises(KeyError):
            await cache.get("nope")
        assert calls == ["nope", "nope"]

    asyncio.run(main())


def test_a_slow_poller_does_not_wait_for_a_refresh():
    async def main():
        store, clock = Store(), ManualClock()
        cache = make(store.read, clock)
        await cache.get("j")
        clock.advance(REFRESH_S)
        store.gate = threading.Event()  # the refresh hangs until the gate opens...
        assert await cache.get("j") == b"queued"
        assert await cache.get("j") == b"queued"  # ...and is not started twice
        await began(store, 2)
        assert not store.gate.is_set() and len(cache._reading) == 1  # answered while the refresh hangs
        store.gate.set()
        await settled(cache)
        assert store.reads == 2

    asyncio.run(main())
