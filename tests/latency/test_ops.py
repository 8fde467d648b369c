"""Op keys: derived from the graph, matching what onnxruntime runs; extremes over a space."""

from __future__ import annotations

import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import TypeAdapter

from nasprune.graph.units import bound_graph, extreme_graph, plan_for
from nasprune.latency.ops import OpKey, all_ops, block_ops, extreme_config, ops_for
from nasprune.registry import create_supernet, list_spaces, load_space
from tests.latency.conftest import every_config

SPACES = list_spaces()


def _random(space, n=30, seed=0):
    rng = np.random.default_rng(seed)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


@pytest.mark.parametrize("name", SPACES)
def test_keys_count_macs_like_the_trace_and_are_all_enumerated(name):
    space = load_space(name)
    net = create_supernet(space)
    keys = set(all_ops(space))
    for cfg in _random(space):
        ops = ops_for(space, cfg)
        assert sum(k.macs for k in ops) == net.macs(cfg)
        assert set(ops) <= keys
    assert len(keys) == len(all_ops(space))


@pytest.mark.parametrize("name", SPACES)
def test_units_follow_the_layers_that_run(name):
    """Conv/linear units are named after their layer, in the trace's order; skipped blocks have none."""
    space = load_space(name)
    net = create_supernet(space)
    for cfg in _random(space, n=5):
        units = [b for b, k in block_ops(space, cfg) if k.kind in ("conv", "linear")]
        paths = [layer.path for layer in net.trace(cfg) if layer.kind in ("conv1d", "conv2d", "linear")]
        assert units == paths
        for block in space.skipped_blocks(cfg.depths):
            assert not any(b.startswith(block + ".") for b, _ in block_ops(space, cfg))


def test_keys_are_typed_hashable_and_serialisable():
    key = OpKey("conv", 16, 32, kernel=3, stride=2, h_in=14, w_in=14, activation="relu", residual="add", post="relu")
    assert {key: 1}[OpKey("conv", 16, 32, 0, 3, 2, 1, 14, 14, "relu", "add", post="relu")] == 1
    adapter = TypeAdapter(OpKey)
    assert adapter.validate_json(adapter.dump_json(key)) == key
    with pytest.raises(ValueError):
        adapter.validate_python({"kind": "attention", "c_in": 1, "c_out": 1})


def _kernels(model: bytes | str) -> list[str]:
    """The nodes onnxruntime runs after its graph optimisations (fusions and layout reorders)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        graph = onnx.load(f"{tmp}/opt.onnx").graph
    nodes = []
    for n in graph.node:
        act = {a.name: a.s for a in n.attribute}.get("activation", b"").decode()
        nodes.append(f"{n.op_type}{'+' + act if act else ''}{'+sum' if len(n.input) == 4 else ''}")
    return nodes


def _brute(space, cost, score):
    vals = []
    for cfg in every_config(space):
        total = tuple(map(sum, zip(*(cost(k) for k in ops_for(space, cfg)), strict=True)))
        vals.append(score(total))
    return min(vals), max(vals)


@pytest.mark.parametrize("which", ["tiny_resnet", "tiny_mlp"])
def test_extremes_are_exact(which, request):
    """For arbitrary per-key costs and a non-linear score (a weight spill penalty), the extremes found
    without enumeration are those of the brute force over every subnet; the fallback search and the
    bound bracket them."""
    space = request.getfixturevalue(which)
    plan = plan_for(space)
    keys = all_ops(space)
    rng = np.random.default_rng(7)
    t = {k: float(rng.random()) for k in keys}
    scores = [lambda v: v[0], lambda v: v[0] + 0.002 * max(0.0, v[1] - 1500)]
    for score in scores:

        def cost(k):
            return (t[k], float(k.weights))

        lo, hi = _brute(space, cost, score)
        cfg_lo, got_lo = extreme_config(space, cost, min, score)
        cfg_hi, got_hi = extreme_config(space, cost, max, score)
        assert got_lo == pytest.approx(lo) and got_hi == pytest.approx(hi)
        assert cfg_lo.space == space.name and cfg_hi.space == space.name
        total = lambda cfg, score=score: score(tuple(map(sum, zip(*map(cost, ops_for(space, cfg)), strict=True))))  # noqa: E731
        assert lo - 1e-9 <= extreme_graph(space, plan, total, min)[1]
    assert bound_graph(space, plan, lambda k: t[k], min) <= _brute(space, lambda k: (t[k],), lambda v: v[0])[0] + 1e-9


def test_extremes_of_macs_are_the_smallest_and_largest_subnets():
    for name in SPACES:
        space = load_space(name)
        net = create_supernet(space)
        cfg, macs = extreme_config(space, lambda k: k.macs, min)
        assert macs == net.macs(space.smallest()) and cfg == space.smallest()
        cfg, macs = extreme_config(space, lambda k: k.macs, max)
        assert macs == net.macs(space.largest()) and cfg == space.largest()
