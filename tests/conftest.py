"""Shared fixtures. Spaces are parametrised from the registry, so a new YAML file is tested too."""

from __future__ import annotations

import os

import pytest
import torch

from tests.pg import pg_server  # noqa: F401  (the shared PostgreSQL fixture)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
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
