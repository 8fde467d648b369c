"""Tiny spaces and latency tables measured on this machine, shared by the latency tests.

The tables are real (onnxruntime sessions, exported subnets) but measured with few repeats, so
they are quick to build and only as accurate as the tests need.
"""

from __future__ import annotations

import itertools

import pytest

from nasprune.latency import ProfileSettings, build_table
from nasprune.space import parse_space

FAST = ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=10, settle=1, warmup=5)

TINY_RESNET = {
    "name": "tiny_resnet",
    "family": "resnet",
    "dataset": "none",
    "input_shape": [1, 8, 8],
    "num_classes": 4,
    "stem_widths": [8, 16],
    "stages": [
        {"depths": [1, 2], "stride": 2, "out_widths": [8, 16], "mid_widths": [8, 16]},
        {"depths": [1, 2, 3], "stride": 2, "out_widths": [16, 24], "mid_widths": [8, 16, 24]},
    ],
}

TINY_MLP = {
    "name": "tiny_mlp",
    "family": "mlp",
    "dataset": "none",
    "input_shape": [16],
    "num_classes": 4,
    "stages": [{"depths": [1, 2], "widths": [8, 16, 32]}, {"depths": [1, 2], "widths": [8, 24]}],
}


def every_config(space):
    """All subnets of a (tiny) space, by brute force."""
    layers = space.width_layers()
    out = {}
    for combo in itertools.product(*space.depth_choices().values()):
        depths = dict(zip(space.depth_choices(), combo, strict=True))
        active = space.active_layers(depths)
        for widths in itertools.product(*(layers[layer] for layer in active)):
            cfg = space.config(depths, dict(zip(active, widths, strict=True)))
            out[cfg.key()] = cfg
    return list(out.values())


@pytest.fixture(scope="session")
def tiny_resnet():
    return parse_space(TINY_RESNET)


@pytest.fixture(scope="session")
def tiny_mlp():
    return parse_space(TINY_MLP)


@pytest.fixture(scope="session")
def resnet_table(tiny_resnet):
    return build_table(tiny_resnet, n_fit=6, n_validate=3, settings=FAST)


@pytest.fixture(scope="session")
def mlp_table(tiny_mlp):
    return build_table(tiny_mlp, n_fit=6, n_validate=3, settings=FAST)


@pytest.fixture(scope="session", params=["resnet", "mlp"])
def table(request, resnet_table, mlp_table):
    return resnet_table if request.param == "resnet" else mlp_table
