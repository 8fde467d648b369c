"""Latency keys of graph-derived spaces: one key per unit onnxruntime runs, derived from the graph."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from nasprune.export import export_subnet
from nasprune.graph import GraphSupernet, analyze_model, build_model, space_from_analysis
from nasprune.graph.units import bound_graph, plan_for
from nasprune.latency.graphs import consumer_model, consumers_of, op_model, producer_model, producer_of
from nasprune.latency.ops import all_ops, extreme_config, ops_for
from nasprune.latency.profile import deployable_supernet
from tests.graph.test_conformance import MODELS
from tests.latency.test_ops import _kernels

_LAYOUT_ONLY = {"ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}


def _space(name: str, max_choices: int = 3):
    ref, kwargs, shape = MODELS[name]
    model = build_model(ref, kwargs).eval()
    analysis = analyze_model(model, torch.zeros(1, *shape))
    return space_from_analysis(analysis, name, ref, num_classes=10, model_kwargs=kwargs, max_choices=max_choices), model


@pytest.mark.parametrize("name", list(MODELS))
def test_key_macs_add_up_to_the_supernet_macs(name):
    space, model = _space(name)
    net = GraphSupernet(space, model)
    rng = np.random.default_rng(0)
    for cfg in [space.smallest(), space.largest(), space.sample(rng), space.sample(rng)]:
        assert sum(k.macs for k in ops_for(space, cfg)) == net.macs(cfg)
    keys = set(all_ops(space))
    for cfg in [space.smallest(), space.largest(), space.sample(rng)]:
        assert set(ops_for(space, cfg)) <= keys  # every key a subnet runs is one the table measures


def _compute_kernels(model) -> Counter:
    return Counter(k for k in _kernels(model) if k not in _LAYOUT_ONLY)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_1", "resnet18", "resnet_mnist", "mlp_digits"])
def test_keys_describe_the_kernels_onnxruntime_runs(name, tmp_path):
    """The compute kernels of a whole exported subnet (after onnxruntime's fusions: Conv+HardSwish,
    Conv+Add+ReLU, ...) are those of its keys' minimal graphs, less their producers and consumers."""
    space, _ = _space(name)
    net = deployable_supernet(space)
    cfg = space.sample(np.random.default_rng(3))
    export_subnet(net, cfg, tmp_path / "s.onnx")
    parts: Counter = Counter()
    for key in ops_for(space, cfg):
        parts.update(_compute_kernels(op_model(key)))
        if (p := producer_of(key)) is not None:
            parts.subtract(_compute_kernels(producer_model(p)))
        for c in consumers_of(key):
            parts.subtract(_compute_kernels(consumer_model(c)))
            parts.update(_compute_kernels(producer_model(producer_of_consumer(c))))
    assert _compute_kernels(str(tmp_path / "s.onnx")) == +parts


def producer_of_consumer(c):
    from nasprune.latency.graphs import consumer_baseline

    return consumer_baseline(c)


def test_extremes_are_the_smallest_and_largest_for_monotone_costs_and_bounded():
    space, _ = _space("mobilenet_v3_small")
    plan = plan_for(space)
    cfg, macs = extreme_config(space, lambda k: k.macs, min)
    assert cfg == space.smallest()
    assert bound_graph(space, plan, lambda k: k.macs, min) <= macs
    cfg, macs = extreme_config(space, lambda k: k.macs, max)
    assert cfg == space.largest()
    assert bound_graph(space, plan, lambda k: k.macs, max) == macs
    # a cost that is not monotone in width: the descent finds a config better than the start
    cost = lambda k: float((k.c_out - 40) ** 2) if k.kind == "conv" else 0.0  # noqa: E731
    start = sum(cost(k) for k in ops_for(space, space.smallest()))
    cfg, best = extreme_config(space, cost, min)
    assert best < start and bound_graph(space, plan, cost, min) <= best


def test_an_op_without_a_hand_written_unit_gets_its_own():
    """An adaptive pool to 3x3 (no pool key describes it) is an ``op`` unit of its own, keyed by the op
    and its shapes; its graph is the op as torch exports it (tests/latency/test_unseen_ops.py has more)."""
    from torch import nn

    from nasprune.graph.units import UnitPlan

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(3)
            self.fc = nn.Linear(16 * 9, 4)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.conv(x)), 1))

    model = Odd().eval()
    analysis = analyze_model(model, torch.zeros(1, 3, 8, 8))
    space = space_from_analysis(analysis, "odd", "tests:Odd", num_classes=4)
    plan = UnitPlan(analysis)
    keys = dict(plan.ops(space, space.smallest()))
    pool = keys["pool"]
    assert pool.kind == "op" and pool.op == "AdaptiveAvgPool2d(output_size=3)"
    assert pool.inputs == ((1, space.smallest().widths["conv"], 8, 8),) and pool.outputs[0][2:] == (3, 3)
    assert [k.kind for k in keys.values()] == ["conv", "op", "linear"]
