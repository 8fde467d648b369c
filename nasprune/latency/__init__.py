"""Latency on a named device, predicted from a subnet's config by a measured lookup table.

``get_table(space, device)`` returns the :class:`LatencyTable` (built on first use for the built-in
device ``local-cpu``); ``table.predict(cfg)`` is the latency in milliseconds, ``table.error`` how
wrong it was on held-out subnets. See ``docs/latency.md``.
"""

from nasprune.latency.device import LOCAL_CPU, DeviceProfile
from nasprune.latency.ops import OpKey, ops_for
from nasprune.latency.profile import ProfileSettings, build_table, measure_subnet
from nasprune.latency.store import get_table, table_path
from nasprune.latency.table import ErrorReport, LatencyTable
from nasprune.latency.validate import validate_table

__all__ = [
    "LOCAL_CPU",
    "DeviceProfile",
    "ErrorReport",
    "LatencyTable",
    "OpKey",
    "ProfileSettings",
    "build_table",
    "get_table",
    "measure_subnet",
    "ops_for",
    "table_path",
    "validate_table",
]
