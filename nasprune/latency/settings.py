"""How a latency table is measured (:class:`ProfileSettings`) and at which precisions.

Part of every table (``LatencyTable.settings``) and the input of profiling, so both
:mod:`nasprune.latency.table` and :mod:`nasprune.latency.profile` import it from here.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from nasprune.errors import LatencyTableError

__all__ = ["MAX_FLUSH_KB", "PRECISIONS", "STATISTICS", "ProfileSettings", "check_precision"]

PRECISIONS = ("fp32", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise LatencyTableError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


Statistic = Literal["min of round medians", "median of all calls"]
STATISTICS: tuple[str, ...] = get_args(Statistic)
"""How a session's timed calls become its time: the minimum over rounds of each round's median (the default),
or the median of all its calls (tables built before 2026-12-07)."""

MAX_FLUSH_KB = 65536
"""The most memory ``ProfileSettings.flush_kb`` may write before a timed call (64 MiB)."""


class ProfileSettings(BaseModel):
    """How hard to measure. Defaults give stable tables in well under a minute of timing per space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_rounds: int = Field(40, ge=1, description="rounds over all op sessions")
    op_burst: int = Field(10, ge=1, description="timed calls per op per round")
    e2e_rounds: int = Field(30, ge=1, description="rounds over all subnet sessions")
    e2e_burst: int = Field(20, ge=1, description="timed calls per subnet per round")
    settle: int = Field(2, ge=0, description="untimed calls before each burst")
    warmup: int = Field(20, ge=0, description="untimed calls per session before the first round")
    statistic: Statistic = Field(
        "min of round medians",
        description="how a unit's or subnet's timed calls become its time: the minimum over rounds of each round's "
        "median (stable when the machine's speed moves or other processes come and go: docs/latency.md), or the "
        "median of all calls (what tables built before it recorded)",
    )
    flush_kb: int = Field(
        0,
        ge=0,
        le=MAX_FLUSH_KB,
        description="KiB of memory written before every timed op call (0: off): the unit's weights then come "
        "from beyond the core's private caches, as inside a network (docs/results.md, benchmarks/unit_cache.py)",
    )
