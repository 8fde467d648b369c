"""``Catalog.min_latency_ms``: what submissions check budgets against, and how long it is remembered."""

from __future__ import annotations

from services.api import catalog
from services.api.catalog import MIN_LATENCY_CACHE_S, NO_TABLE_CACHE_S, Catalog
from tests.services.clock import ManualClock


def test_a_missing_table_is_remembered_briefly(settings, monkeypatch):
    tables: dict[tuple[str, str], float] = {}
    calls = []

    def built_minimum(space, device, data_dir):
        calls.append((space, device))
        return tables.get((space, device))

    monkeypatch.setattr(catalog, "cached_min_latency_ms", built_minimum)
    clock = ManualClock()
    cat = Catalog(settings, clock=clock)

    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None
    tables[("mlp_digits", "local-cpu")] = 0.5  # the table gets built
    clock.advance(NO_TABLE_CACHE_S - 0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None and len(calls) == 1
    clock.advance(0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.5 and len(calls) == 2
    clock.advance(MIN_LATENCY_CACHE_S - 0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.5 and len(calls) == 2  # built: kept longer
    tables[("mlp_digits", "local-cpu")] = 0.4  # rebuilt
    clock.advance(0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.4 and len(calls) == 3
