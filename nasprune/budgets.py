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
    how: str = "predicted by the latency table"
    """Where the figures come from: the table (exact over the space), or the smallest and largest
    subnet measured now (an estimate until a table exists)."""

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
    from nasprune.latency.store import get_table

    name = space if isinstance(space, str) else space.name
    try:
        table = get_table(space, device, data_dir, build=False, precision=precision)
        return LatencyRange(name, device, float(table.min_latency()), float(table.max_latency()), precision=precision)
    except NasPruneError:  # not built, stale for this machine, or unreadable: say how to build it
        return LatencyRange(name, device, missing=build_hint(name, device, precision), precision=precision)


def measured_range(supernet, rounds: int = 6) -> LatencyRange:
    """The latency of ``supernet``'s smallest and largest subnet on this machine (``local-cpu``),
    exported through the checked deployment path and timed now with onnxruntime: an estimate of the
    range in seconds, before any latency table is built (the table's range is exact: a subnet other
    than the smallest can be the fastest)."""
    import tempfile

    from nasprune.latency.device import DeviceProfile
    from nasprune.latency.profile import ProfileSettings, export_all, measure_models

    space = supernet.space
    settings = ProfileSettings(e2e_rounds=rounds, e2e_burst=10, warmup=10)
    with tempfile.TemporaryDirectory(prefix="nasprune-range-") as tmp:
        paths = export_all(supernet, [space.smallest(), space.largest()], Path(tmp))
        small, large = measure_models(paths, DeviceProfile.local(), settings)
    lo, hi = sorted((small.median_ms, large.median_ms))
    return LatencyRange(
        space.name,
        LOCAL_CPU,
        lo,
        hi,
        how="an estimate, measured now: the smallest and largest "
        "subnet exported and timed with onnxruntime; the latency table gives the exact range",
    )


def suggested_budgets(rng: LatencyRange) -> tuple[float, float]:
    """Budgets that trade accuracy for latency: from a fifth to four fifths of the way up the range
    (below its bottom nothing fits; at its top every subnet fits and the largest wins)."""
    span = rng.max_ms - rng.min_ms
    return rng.min_ms + 0.2 * span, rng.min_ms + 0.8 * span


def budget_advice(rng: LatencyRange, next_command: str, quick_command: str | None = None) -> list[str]:
    """Lines that say the range, where it comes from, the budgets worth asking for and the command to run
    (``next_command`` with ``{budget}`` where the suggested budget goes; ``quick_command``, the same for
    tier 0, where the model has trained weights to prune)."""
    if not rng.known:
        return [f"latency on {rng.device}: no table yet ({rng.missing})"]
    lo, hi = suggested_budgets(rng)
    mid = f"{float(f'{(lo + hi) / 2:.3g}'):g}"
    lines = [
        f"latency on {rng.device}: {rng.min_ms:.4g} .. {rng.max_ms:.4g} ms at batch 1 ({rng.how})",
        f"suggested budget: {lo:.3g} .. {hi:.3g} ms (below {rng.min_ms:.4g} ms no subnet fits and a job is refused; "
        f"at or above {rng.max_ms:.4g} ms every subnet fits and the largest wins)",
        f"next: {next_command.format(budget=mid)}",
    ]
    if quick_command:
        lines.append(f"  or, in about a minute without training (tier 0): {quick_command.format(budget=mid)}")
    return lines


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
    from nasprune.paths import devices_dir, table_file_device, tables_dir

    names = {table_file_device(p) for p in tables_dir(data_dir).glob("*__*.json")}
    names |= {d.name for d in devices_dir(data_dir).iterdir() if d.is_dir() and any(d.glob("*.json"))}
    names.discard(LOCAL_CPU)
    return [LOCAL_CPU, *sorted(names)]
