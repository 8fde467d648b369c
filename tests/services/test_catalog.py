"""``Catalog.min_latency_ms``: what submissions check budgets against, and how long it is remembered."""

from __future__ import annotations

import time

from services.api import catalog
from services.api.catalog import Catalog


def test_a_missing_table_is_remembered_briefly(settings, monkeypatch):
    tables: dict[tuple[str, str], float] = {}
    calls = []

    def built_minimum(space, device, data_dir):
        calls.append((space, device))
        return tables.get((space, device))

    monkeypatch.setattr(catalog, "cached_min_latency_ms", built_minimum)
    monkeypatch.setattr(catalog, "NO_TABLE_CACHE_S", 0.05)
    cat = Catalog(settings)

    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None
    tables[("mlp_digits", "local-cpu")] = 0.5  # the table gets built
    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None and len(calls) == 1
    time.sleep(0.06)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.5 and len(calls) == 2
    time.sleep(0.06)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.5 and len(calls) == 2  # built: kept longer
