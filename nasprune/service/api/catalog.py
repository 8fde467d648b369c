"""What a job can ask for: registered search spaces, devices (built-in and uploaded), reachable budgets."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nasprune.budgets import LatencyRange, budget_warnings, build_hint, latency_range
from nasprune.errors import LatencyTableError, NasPruneError
from nasprune.paths import uploaded_table_name, uploaded_table_space
from nasprune.service.api.schemas import DEVICE_NAME_PATTERN, DevicePublic, LatencyRangePublic, SpacePublic
from nasprune.service.jobs.errors import InvalidRequest, UnknownDevice, UnknownSpace
from nasprune.settings import Settings

BUILTIN_DEVICE = "local-cpu"
RANGE_CACHE_S = 600.0  # a rebuilt local table changes the range a little
NO_TABLE_CACHE_S = 10.0  # learning "not built yet" loads the space; a job checks its budget itself later
BUILTIN_DESCRIPTION = (
    "this server's CPU: onnxruntime CPU provider, 1 intra-op thread, batch 1 (a space's table is built by its "
    "first job on it)"
)

log = logging.getLogger(__name__)


def cached_latency_range(space: str, device: str, data_dir: Path, precision: str = "fp32") -> LatencyRange:
    """The predicted latency range of ``space`` on ``device`` when its table is already built.

    Never builds a table (that takes minutes): without one the range is unknown and says how to
    build it, and a job checks its budget itself once its table exists.
    """
    return latency_range(space, device, data_dir, precision)


def validate_table(payload: Any) -> Any:
    """A latency table parsed and checked by ``nasprune.latency.table.LatencyTable``."""
    from nasprune.latency.table import LatencyTable  # torch and onnx: imported on first use (see warm_imports)

    try:
        return LatencyTable.model_validate(payload)
    except ValidationError as e:
        problems = []
        for err in e.errors()[:3]:
            where = ".".join(str(p) for p in err["loc"]) or "table"
            what = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("finite_number", "greater_than_equal", "greater_than") and "input" in err:
                what += f" (got {err['input']!r})"
            problems.append(f"{where}: {what}")
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        raise LatencyTableError(
            f"not a valid latency table ({e.error_count()} problem(s)): {'; '.join(problems)}{more}"
        ) from None


class Catalog:
    """Spaces from the registry; devices are ``local-cpu`` plus tables uploaded under ``settings.devices_dir``.

    Latency ranges of built tables are remembered for ``RANGE_CACHE_S``, that a table is not built
    yet for ``NO_TABLE_CACHE_S`` (an upload forgets that device's entries at once).
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._now = clock  # monotonic seconds; tests pass their own and move it
        self._ranges: dict[tuple[str, str, str], tuple[LatencyRange, float]] = {}
        self._lock = threading.Lock()

    # spaces ---------------------------------------------------------------------------------------

    def space_names(self) -> list[str]:
        from nasprune.registry import list_spaces

        return list_spaces()

    def spaces(self, hidden_devices: set[str] = frozenset()) -> list[SpacePublic]:
        """Every space with its latency range on each device, but devices in ``hidden_devices`` (another's)."""
        from nasprune.registry import load_space

        out = []
        devices = [d for d in self.device_names() if d not in hidden_devices]
        for name in self.space_names():
            sp = load_space(name)
            out.append(
                SpacePublic(
                    name=name,
                    model=sp.model,
                    dataset=sp.dataset,
                    input_shape=list(sp.input_shape),
                    num_classes=sp.num_classes,
                    size=sp.size,
                    description=sp.description,
                    latency=[_public(r) for d in devices for r in self._ranges_of(name, d)],
                )
            )
        return out

    def check_space(self, name: str) -> None:
        names = self.space_names()
        if name not in names:
            raise UnknownSpace("space", f"unknown search space '{name}'; available: {', '.join(names) or 'none'}")

    def check_model(self, model_id: str) -> None:
        from nasprune.paths import model_space_file
        from nasprune.service.api.errors import ModelNotFound

        if not model_space_file(model_id, self.settings.data_dir).is_file():
            raise ModelNotFound(model_id)

    # devices --------------------------------------------------------------------------------------

    def _tables(self, device: str) -> list[Path]:
        folder = self.settings.devices_dir / device
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def device_names(self) -> list[str]:
        d = self.settings.devices_dir
        uploaded = sorted(p.name for p in d.iterdir() if p.is_dir() and self._tables(p.name)) if d.is_dir() else []
        return [BUILTIN_DEVICE, *uploaded]

    def devices(self, hidden: set[str] = frozenset()) -> list[DevicePublic]:
        local = [r for s in self.space_names() for r in self._ranges_of(s, BUILTIN_DEVICE)]
        out = [
            DevicePublic(
                name=BUILTIN_DEVICE,
                builtin=True,
                description=BUILTIN_DESCRIPTION,
                spaces=list(dict.fromkeys(r.space for r in local if r.known)),
                latency=[_public(r) for r in local],
            )
        ]
        for name in self.device_names()[1:]:
            if name in hidden:
                continue
            tables = self._tables(name)
            held = [uploaded_table_space(p) for p in tables]
            ranges = [self.latency_range(space, name, precision) for space, precision in held]
            out.append(
                DevicePublic(
                    name=name,
                    builtin=False,
                    description="uploaded latency tables",
                    spaces=list(dict.fromkeys(space for space, _ in held)),
                    uploaded_at=datetime.fromtimestamp(max(p.stat().st_mtime for p in tables), UTC),
                    latency=[_public(r) for r in ranges],
                )
            )
        return out

    def check_device(self, name: str, hidden: set[str] = frozenset()) -> None:
        """An unknown device, or one in ``hidden`` (another user's), is answered the same way."""
        names = [d for d in self.device_names() if d not in hidden]
        if name not in names:
            raise UnknownDevice(
                "device",
                f"unknown device '{name}'; available: {', '.join(names)} "
                "(upload a latency table as a new device: POST /v1/devices?name=NAME)",
            )

    def save_device(self, name: str, payload: Any) -> DevicePublic:
        """Validate an uploaded latency table and store it for device ``name``.

        A table covers one space at one precision on one device: it is kept as
        ``<devices_dir>/<name>/<space>.json`` (``<space>__int8.json`` for an int8 table; where
        ``nasprune.latency.get_table`` finds it), replacing an older table of that space and precision.
        """
        if not re.fullmatch(DEVICE_NAME_PATTERN, name):
            raise InvalidRequest("name", f"'{name}' is not a device name: use lowercase letters, digits, '_', '.', '-'")
        if name == BUILTIN_DEVICE:
            raise InvalidRequest("name", f"'{BUILTIN_DEVICE}' is the built-in device; choose another name")
        if not isinstance(payload, dict):
            raise LatencyTableError(f"a latency table is a JSON object, not {type(payload).__name__}")
        table = validate_table(payload)
        # an int8 table sits beside the fp32 one of the same space, never over it
        file = uploaded_table_name(table.space.name, table.precision)
        folder = self.settings.devices_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{file}.tmp"
        tmp.write_text(table.model_dump_json())
        os.replace(tmp, folder / file)
        self.forget(name)
        return next(d for d in self.devices() if d.name == name)

    def forget(self, device: str | None = None) -> None:
        """Drop the remembered latency ranges (of ``device``, or all): the next read loads the tables."""
        with self._lock:
            for key in [k for k in self._ranges if device is None or k[1] == device]:
                del self._ranges[key]

    # budgets --------------------------------------------------------------------------------------

    def _ranges_of(self, space: str, device: str) -> list[LatencyRange]:
        """fp32 always (known or how to build it); int8 where its table exists."""
        int8 = self.latency_range(space, device, "int8")
        return [self.latency_range(space, device), *([int8] if int8.known else [])]

    def latency_range(self, space: str, device: str, precision: str = "fp32") -> LatencyRange:
        """The predicted latency range when the table is built; unknown (with a build hint) otherwise."""
        key = (space, device, precision)
        with self._lock:
            hit = self._ranges.get(key)
        if hit is not None:
            value, read_at = hit
            if self._now() - read_at < (RANGE_CACHE_S if value.known else NO_TABLE_CACHE_S):
                return value
        try:
            value = cached_latency_range(space, device, self.settings.data_dir, precision)
        except NasPruneError as e:
            log.warning("latency range of %s on %s (%s) unavailable: %s", space, device, precision, e)
            return LatencyRange(space, device, missing=build_hint(space, device, precision), precision=precision)
        with self._lock:
            self._ranges[key] = (value, self._now())
        return value

    def min_latency_ms(self, space: str, device: str, precisions=("fp32",)) -> float | None:
        """The smallest achievable latency at any of ``precisions`` when their tables are built, else
        None (the job checks later: an int8 table not built yet may reach below the fp32 floor)."""
        floors = [self.latency_range(space, device, p).min_ms for p in precisions]
        return None if any(f is None for f in floors) else min(floors)

    def budget_warnings(self, space: str, device: str, budget_ms: float) -> list[str]:
        """Warnings for an accepted budget: at or above the slowest subnet, every subnet fits."""
        return budget_warnings(budget_ms, self.latency_range(space, device))


def _public(r: LatencyRange) -> LatencyRangePublic:
    return LatencyRangePublic(
        space=r.space, device=r.device, min_ms=r.min_ms, max_ms=r.max_ms, missing=r.missing, precision=r.precision
    )


def warm_imports() -> None:
    """Import the latency stack (torch, onnx; ~1.4 s cold) in a start-up thread, so the first job
    submission, which checks its budget against a latency table, does not wait for it."""
    try:
        import nasprune.latency  # noqa: F401  (get_table, as the budget check uses it)
    except Exception:  # a warm-up must never take the service down
        log.exception("warm-up import failed; the first submission will import what it needs itself")
