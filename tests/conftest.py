"""Shared fixtures. Spaces are parametrised from the registry, so a new YAML file is tested too."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from nasprune.latency import ProfileSettings, build_table, table_path
from nasprune.registry import load_space
from nasprune.train import TrainConfig, save_checkpoint, supernet_path, train_supernet
from tests.pg import pg_server  # noqa: F401  (the shared PostgreSQL fixture)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
SPACE = "mlp_digits"
"""The space of ``prepared``."""
torch.set_num_threads(1)


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every norm non-trivial statistics and affine params, so slicing bugs show in outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "running_mean") and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return net


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """A data dir with a trained mlp_digits supernet and its measured latency table, built once per session
    (training ~10 s, table ~20 s), so search tests run real trials on real accuracies and onnxruntime
    latencies without the default recipes. Tests that add to the data dir work on a copy of it."""
    root = tmp_path_factory.mktemp("nasprune-data")
    space = load_space(SPACE)
    res = train_supernet(space, TrainConfig(epochs=8, warmup_epochs=2, batch_size=64, max_shift=0), progress=False)
    save_checkpoint(res.supernet, supernet_path(space, root))
    settings = ProfileSettings(op_rounds=10, op_burst=5, e2e_rounds=8, e2e_burst=10, warmup=5)
    table = build_table(space, n_fit=8, n_validate=6, settings=settings)
    table.save(table_path(SPACE, "local-cpu", root))
    return root, table


@pytest.fixture(scope="session")
def shared_mlflow(tmp_path_factory):
    """One MLflow server for the tests that only log to a server and read back what their own job logged (a
    start costs ~6 s). Tests that stop, kill, block or restart their server, or that test starting one, start
    their own."""
    from nasprune.mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


@pytest.fixture
def budget(prepared):
    """A budget that about 40% of random subnets exceed: the 60th percentile of their predicted latency.

    So a dozen sampled trials include infeasible ones all but ~0.1% of the time (0.6 ** 13), and
    the fastest subnets stay ~20% under it, beyond the few percent by which measured latency can
    exceed predicted on a busy machine (verification must find one within budget). The middle of
    the latency range was used before: ~77% of random mlp_digits subnets fit there, and a 10-trial
    Ray search came out all feasible about one run in eight. The 40th percentile left the fastest
    subnets only ~3% under the budget once measured, and verification then sometimes found none.
    """
    _, table = prepared
    rng = np.random.default_rng(0)
    return float(np.quantile([table.predict(table.space.sample(rng)) for _ in range(400)], 0.6))


# Tests that start Ray (a cluster with `ray start`, or a local one with `ray.init()`).
RAY_TESTS = (
    "tests/search/test_ray_cluster.py",
    "tests/search/test_ray_signals.py",
    "tests/search/test_service_ray.py",
    "tests/train/test_ray_train.py",
    "tests/search/test_search.py::test_backend_conformance[ray]",
)


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): a file's tests stay
    together on one worker, so module fixtures are built once, and every test that starts Ray runs on the
    same worker, one at a time (a ``ray.init()`` without an address joins the newest cluster a ``ray start``
    made on this machine, so two at once would meet)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        nodeid = item.nodeid
        ray = any(nodeid == t or nodeid.startswith(t + "::") for t in RAY_TESTS)
        item.add_marker(pytest.mark.xdist_group("ray" if ray else nodeid.split("::", 1)[0]))
