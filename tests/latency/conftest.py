"""Tiny spaces and latency tables measured on this machine, shared by the latency tests.

The spaces are derived from small versions of the built-in models (the same factories with smaller
arguments), narrowed so that every subnet can be enumerated. The tables are real (onnxruntime
sessions, exported subnets) but measured with few repeats, so they are quick to build and only as
accurate as the tests need.
"""

from __future__ import annotations

import itertools

import pytest

from nasprune.graph import build_model
from nasprune.graph.api import derive_space
from nasprune.latency import ProfileSettings, build_table
from nasprune.space import parse_space

FAST = ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=10, settle=1, warmup=5)


def _tiny(name: str, ref: str, kwargs: dict, shape: tuple, widths: dict[str, list[int]]) -> dict:
    """A derived space as a plain mapping (what a YAML file holds), its groups narrowed to ``widths``."""
    space = derive_space(build_model(ref, kwargs), shape, ref, name=name, model_kwargs=kwargs, dataset="none")
    data = space.model_dump(mode="json")
    data["groups"] = {g: {**spec, "widths": widths.get(g, spec["widths"])} for g, spec in data["groups"].items()}
    return data


# stem 16 -> stage 0 (16 channels, 2 blocks, 4x4) -> stage 1 (32 channels, 2 blocks, 2x2); 1 x 8 x 8 input
TINY_RESNET = _tiny(
    "tiny_resnet",
    "nasprune.models.resnet_mnist:resnet_mnist",
    {"num_classes": 4, "stem": 16, "width": 16, "stages": 2, "blocks": 2},
    (1, 8, 8),
    {"stages.1.0.conv1": [8, 24, 32], "stages.1.0.conv2": [16, 24], "stages.1.1.conv1": [8, 32]},
)

# stream 32 wide, two bottleneck blocks of 16; 16 input features
TINY_MLP = _tiny(
    "tiny_mlp",
    "nasprune.models.mlp_digits:mlp_digits",
    {"num_classes": 4, "in_features": 16, "width": 32, "mid": 16, "blocks": 2},
    (16,),
    {"stem.0": [8, 16, 32]},
)


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
