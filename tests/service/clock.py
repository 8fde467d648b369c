"""A clock that tests move by hand, for caches that take ``clock=`` (no sleeping to age an entry)."""

from __future__ import annotations


class ManualClock:
    """Monotonic seconds that change only when ``advance`` is called."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
