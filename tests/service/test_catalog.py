"""``Catalog``: the latency ranges listings show and submissions check budgets against, and how long
they are remembered; the ranges and the budget warning through a real server."""

from __future__ import annotations

import json
import re

import pytest

from nasprune.budgets import LatencyRange
from nasprune.service.api import catalog
from nasprune.service.api.catalog import NO_TABLE_CACHE_S, RANGE_CACHE_S, Catalog
from tests.service.clock import ManualClock
from tests.service.fakes import instant_runner
from tests.service.server import running


def test_a_missing_table_is_remembered_briefly(settings, monkeypatch):
    tables: dict[tuple[str, str], tuple[float, float]] = {}
    calls = []

    def built_range(space, device, data_dir, precision="fp32"):
        calls.append((space, device))
        if (space, device) in tables:
            return LatencyRange(space, device, *tables[(space, device)])
        return LatencyRange(space, device, missing="build it")

    monkeypatch.setattr(catalog, "cached_latency_range", built_range)
    clock = ManualClock()
    cat = Catalog(settings, clock=clock)

    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None
    tables[("mlp_digits", "local-cpu")] = (0.5, 2.0)  # the table gets built
    clock.advance(NO_TABLE_CACHE_S - 0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") is None and len(calls) == 1
    clock.advance(0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.5 and len(calls) == 2
    clock.advance(RANGE_CACHE_S - 0.01)
    assert cat.latency_range("mlp_digits", "local-cpu").max_ms == 2.0 and len(calls) == 2  # built: kept longer
    tables[("mlp_digits", "local-cpu")] = (0.4, 1.9)  # rebuilt
    clock.advance(0.01)
    assert cat.min_latency_ms("mlp_digits", "local-cpu") == 0.4 and len(calls) == 3


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    """A data dir with a real (quickly measured) local-cpu table of mlp_digits, and the same numbers as its
    int8 table (a stand-in: quantizing is not what these tests are about); none of the other spaces."""
    from nasprune.latency import ProfileSettings, build_table, table_path
    from nasprune.registry import load_space

    root = tmp_path_factory.mktemp("catalog") / "data"
    settings = ProfileSettings(op_rounds=3, op_burst=2, e2e_rounds=3, e2e_burst=3, warmup=2)
    table = build_table(load_space("mlp_digits"), n_fit=0, n_validate=0, settings=settings)  # op timings only
    table.save(table_path("mlp_digits", "local-cpu", root))
    int8 = json.loads(table.to_json()) | {"precision": "int8"}
    table_path("mlp_digits", "local-cpu", root, "int8").write_text(json.dumps(int8))
    return root, table


def test_listings_show_the_latency_range_and_how_to_build_a_missing_table(table_dir):
    from nasprune.settings import Settings

    root, table = table_dir
    with running(Settings(data_dir=root, poll_s=0.05), instant_runner) as (client, _):
        spaces = {s["name"]: s for s in client.get("/v1/spaces").json()}
        mlp, mlp8 = spaces["mlp_digits"]["latency"]
        assert mlp8["precision"] == "int8" and mlp8["max_ms"] == pytest.approx(table.max_latency())
        assert mlp == {
            "space": "mlp_digits",
            "device": "local-cpu",
            "min_ms": pytest.approx(table.min_latency()),
            "max_ms": pytest.approx(table.max_latency()),
            "missing": None,
            "precision": "fp32",
        }
        assert mlp["min_ms"] < mlp["max_ms"]
        (resnet,) = spaces["resnet_mnist"]["latency"]
        assert resnet["min_ms"] is None and "nasprune lut build --space resnet_mnist" in resnet["missing"]

        local = client.get("/v1/devices").json()[0]
        assert local["name"] == "local-cpu" and local["spaces"] == ["mlp_digits"]
        ranges = {r["space"]: r for r in local["latency"]}
        assert set(ranges) == set(spaces) and ranges["mlp_digits"]["max_ms"] == mlp["max_ms"]
        assert len(local["latency"]) == len(spaces) + 1  # mlp_digits' int8 range too

        inside = (mlp["min_ms"] + mlp["max_ms"]) / 2
        r = client.post("/v1/jobs", json={"space": "mlp_digits", "latency_budget_ms": inside, "n_trials": 1})
        assert r.status_code == 202 and r.json()["warnings"] == []
        r = client.post("/v1/jobs", json={"space": "mlp_digits", "latency_budget_ms": mlp["max_ms"], "n_trials": 1})
        assert r.status_code == 202, r.text
        (warning,) = r.json()["warnings"]
        assert "at or above the slowest subnet" in warning and f"{mlp['max_ms']:.4g} ms" in warning
        r = client.post("/v1/jobs", json={"space": "mlp_digits", "latency_budget_ms": mlp["min_ms"] / 2})
        assert r.status_code == 422 and r.json()["code"] == "budget_unreachable"

        from nasprune.client import Client

        with Client(str(client.base_url)) as c, pytest.warns(UserWarning, match="at or above the slowest subnet"):
            c.submit("mlp_digits", mlp["max_ms"] * 1.5, n_trials=1)


def test_cli_listings_show_the_range_and_submit_warns(table_dir, capsys):
    from nasprune.settings import Settings
    from tests.service.test_client_cli import in_process

    root, table = table_dir
    lo, hi = f"{table.min_latency():.4g}", f"{table.max_latency():.4g}"
    r = in_process(capsys, "spaces", "list", "--data-dir", str(root))
    assert r.returncode == 0, r.stderr
    (mlp,) = [line for line in r.stdout.splitlines() if line.startswith("mlp_digits")]
    assert mlp.split()[-4:] == ["local-cpu", lo, "..", hi], mlp
    assert re.search(rf"^\s+local-cpu \(int8\)\s+{re.escape(lo)} \.\. {re.escape(hi)}$", r.stdout, re.M), r.stdout
    assert "resnet_mnist: the first job builds it, or 'nasprune lut build --space resnet_mnist'" in r.stdout
    r = in_process(capsys, "lut", "list", "--data-dir", str(root))
    assert r.returncode == 0 and f"{lo} .. {hi}" in r.stdout, r.stdout + r.stderr

    with running(Settings(data_dir=root, poll_s=0.05), instant_runner) as (client, _):
        url = str(client.base_url).rstrip("/")
        r = in_process(
            capsys, "submit", "--space", "mlp_digits", "--budget-ms", str(table.max_latency() * 2), "--url", url
        )
        assert r.returncode == 0, r.stderr
        assert r.stderr.startswith("warning: the latency budget") and "at or above the slowest subnet" in r.stderr
        assert f"budgets between {lo} and {hi} ms" in r.stderr


def test_an_int8_upload_sits_beside_the_fp32_table_of_its_space(table_dir, tmp_path):
    """Uploading a device's int8 table after its fp32 table keeps both: each precision has its own file."""
    from nasprune.latency.store import get_table
    from nasprune.registry import load_space
    from nasprune.settings import Settings

    _, table = table_dir
    data = tmp_path / "data"
    int8 = json.loads(table.to_json()) | {"precision": "int8"}
    with running(Settings(data_dir=data, poll_s=0.05), instant_runner) as (client, _):
        for body in (table.to_json(), json.dumps(int8)):
            r = client.post("/v1/devices", params={"name": "edge-box"}, content=body,
                            headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code in (200, 201), r.text
        (edge,) = [d for d in client.get("/v1/devices").json() if d["name"] == "edge-box"]
        assert {(r["space"], r["precision"]) for r in edge["latency"] if r["min_ms"]} >= {
            ("mlp_digits", "fp32"),
            ("mlp_digits", "int8"),
        }
    assert sorted(p.name for p in (data / "devices" / "edge-box").glob("*.json")) == [
        "mlp_digits.json",
        "mlp_digits__int8.json",
    ]
    space = load_space("mlp_digits")
    assert get_table(space, "edge-box", data, build=False).precision == "fp32"
    assert get_table(space, "edge-box", data, build=False, precision="int8").precision == "int8"
