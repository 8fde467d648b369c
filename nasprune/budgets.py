"""Which latency budgets make sense: a space's predicted latency range on a device, where a table exists.

A budget below the fastest subnet is refused (``nasprune.search.runner.check_budget``); one at or
above the slowest subnet is accepted with a warning, because every subnet fits and the search then
only maximises accuracy (the largest subnet wins). The range is exact (the table's own extremes,
found by variable elimination over the space's choices), never built here: a missing table is
reported with the command that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasprune.errors import NasPruneError

LOCAL_CPU = "local-cpu"


@dataclass(frozen=True)
class LatencyRange:
    """Predicted latency (ms, batch 1) of the fastest and slowest subnet of ``space`` on ``device``.

    ``min_ms``/``max_ms`` are None when there is no usable table; ``missing`` then says why and how
    to build one. ``precision`` is the candidates' (int8 tables are separate files).
    """

    space: str
    device: str
    min_ms: float | None = None
    max_ms: float | None = None
    missing: str | None = None
    precision: str = "fp32"

    @property
    def known(self) -> bool:
        return self.min_ms is not None and self.max_ms is not None

    def describe(self) -> str:
        """``0.0123 .. 0.2345 ms``, or the hint when there is no table."""
        if not self.known:
            return f"no table ({self.missing})" if self.missing else "no table"
        return f"{self.min_ms:.4g} .. {self.max_ms:.4g} ms"


def build_hint(space: str, device: str, precision: str = "fp32") -> str:
    """How to get the table of ``space`` on ``device``."""
    flag = "" if precision == "fp32" else f" --precision {precision}"
    if device == LOCAL_CPU:
        return f"the first job builds it, or 'nasprune lut build --space {space}{flag}'"
    return f"run 'nasprune lut build --space {space} --device {device}{flag}' on that device and upload the file"


def latency_range(space, device: str, data_dir: str | Path | None = None, precision: str = "fp32") -> LatencyRange:
    """The range of ``space`` (a space or its name) on ``device`` from its table; never builds one."""
    from nasprune.latency.table import get_table

    name = space if isinstance(space, str) else space.name
    try:
        table = get_table(space, device, data_dir, build=False, precision=precision)
        return LatencyRange(name, device, float(table.min_latency()), float(table.max_latency()), precision=precision)
    except NasPruneError:  # not built, stale for this machine, or unreadable: say how to build it
        return LatencyRange(name, device, missing=build_hint(name, device, precision), precision=precision)


def budget_warnings(budget_ms: float, rng: LatencyRange) -> list[str]:
    """Why a budget that is accepted is still not a useful one (empty when it is)."""
    if rng.max_ms is None or budget_ms < rng.max_ms:
        return []
    return [
        f"the latency budget {budget_ms:g} ms is at or above the slowest subnet of '{rng.space}' on "
        f"'{rng.device}' ({rng.max_ms:.4g} ms predicted): every subnet fits, so the search only maximises "
        f"accuracy and the largest subnet wins; budgets between {rng.min_ms:.4g} and {rng.max_ms:.4g} ms "
        "trade accuracy for latency"
    ]


def local_devices(data_dir: str | Path | None = None) -> list[str]:
    """``local-cpu`` and every device with a table in the data dir (built here, copied or uploaded)."""
    from nasprune.paths import data_dir as root
    from nasprune.paths import tables_dir

    names = {p.stem.split("__")[1] for p in tables_dir(data_dir).glob("*__*.json")}  # <space>__<device>[__int8]
    uploads = root(data_dir) / "devices"
    if uploads.is_dir():
        names |= {d.name for d in uploads.iterdir() if d.is_dir() and any(d.glob("*.json"))}
    names.discard(LOCAL_CPU)
    return [LOCAL_CPU, *sorted(names)]
