"""Finding latency tables: file names, uploads, load-or-build.

Files live in ``nasprune.paths.tables_dir()`` as ``<space>__<device>.json`` (fp32) and
``<space>__<device>__int8.json`` (int8); tables built on other hardware may also be uploaded to
``<data_dir>/devices/<device>/``. :func:`get_table` loads the table of a space, device and precision,
building the ``local-cpu`` one on first use (:func:`nasprune.latency.profile.build_table`).
"""

from __future__ import annotations

import json
from pathlib import Path

from nasprune.errors import LatencyTableError
from nasprune.latency.device import LOCAL_CPU, DeviceProfile
from nasprune.latency.profile import build_table
from nasprune.latency.settings import check_precision
from nasprune.latency.table import LatencyTable, build_command
from nasprune.paths import devices_dir, table_file_name, tables_dir
from nasprune.registry import load_space

__all__ = ["get_table", "table_path"]


def table_path(space: str, device: str, data_dir: str | Path | None = None, precision: str = "fp32") -> Path:
    """Where the table of ``space`` on ``device`` is kept: ``<tables_dir>/<space>__<device>.json``
    (``...__int8.json`` for the int8 one)."""
    return tables_dir(data_dir) / table_file_name(space, device, precision)


def _uploaded(space: str, device: str, data_dir: str | Path | None, precision: str = "fp32") -> Path | None:
    """A table for ``space`` among the files uploaded for ``device`` (``<data_dir>/devices/<device>/*.json``)."""
    folder = devices_dir(data_dir) / device
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            isinstance(raw, dict)
            and isinstance(raw.get("space"), dict)
            and raw["space"].get("name") == space
            and raw.get("precision", "fp32") == precision
        ):
            return path
    return None


def get_table(
    space,
    device: str | DeviceProfile = LOCAL_CPU,
    data_dir: str | Path | None = None,
    build: bool = True,
    progress: bool = False,
    precision: str = "fp32",
    **build_options,
) -> LatencyTable:
    """The latency table of ``space`` (a space or its name) on ``device`` at ``precision`` (fp32, int8).

    ``local-cpu`` (this machine) is checked against this machine's fingerprint; a missing or stale
    table is built (``build=True``; takes a few minutes, ``build_options`` go to ``build_table``)
    or refused. Other devices are files built on that hardware and copied to :func:`table_path` (or
    uploaded to ``<data_dir>/devices/<device>/``); they are loaded as they are, not checked against
    this machine.
    """
    check_precision(precision)
    hint = "" if precision == "fp32" else f" --precision {precision}"
    if not hasattr(space, "digest"):
        space = load_space(space)
    name = device.name if isinstance(device, DeviceProfile) else device
    if name != LOCAL_CPU:
        path = table_path(space.name, name, data_dir, precision)
        found = path if path.is_file() else _uploaded(space.name, name, data_dir, precision)
        if found is None:
            raise LatencyTableError(
                f"no {precision} latency table for space '{space.name}' on device '{name}' (looked for '{path}'); "
                f"build it on that device with '{build_command(space.name, name)}{hint}' and copy the file there"
            )
        return _of_precision(LatencyTable.load(found, space, device if isinstance(device, DeviceProfile) else None),
                             precision, found)  # fmt: skip
    here = DeviceProfile.local()
    path = table_path(space.name, LOCAL_CPU, data_dir, precision)
    problem = "it has not been built yet"
    if path.is_file():
        try:
            return _of_precision(LatencyTable.load(path, space, here), precision, path)
        except LatencyTableError as e:
            problem = str(e)
    if not build:
        raise LatencyTableError(
            f"no usable {precision} latency table for space '{space.name}' on '{LOCAL_CPU}' ({problem}); "
            f"build it with '{build_command(space.name, LOCAL_CPU)}{hint}'"
        )
    table = build_table(space, here, progress=progress, precision=precision, **build_options)
    table.save(path)
    return table


def _of_precision(table: LatencyTable, precision: str, path: Path) -> LatencyTable:
    if table.precision != precision:
        raise LatencyTableError(
            f"latency table '{path}' holds {table.precision} latencies, not {precision}; "
            f"rebuild it with 'nasprune lut build --precision {precision}'"
        )
    return table
