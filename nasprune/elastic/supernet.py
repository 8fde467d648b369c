"""The supernet: the largest model of a space, of which every subnet is a leading slice."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from nasprune.elastic.modules import ElasticModule, SliceCache, export_module
from nasprune.models.base import Family, LayerShape
from nasprune.space import SubnetConfig


class Supernet(nn.Module):
    """Holds the elastic body of a space. ``with supernet.select(cfg): supernet(x)`` runs a subnet."""

    def __init__(self, space, family: Family):
        super().__init__()
        self.space = space
        self.family = family
        self.body = family.build(space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def trace(self, cfg: SubnetConfig) -> list[LayerShape]:
        return self.family.trace(self.space, self._checked(cfg))

    def _checked(self, cfg: SubnetConfig | dict) -> SubnetConfig:
        return self.space.parse_config(cfg)

    def _elastic(self) -> Iterator[tuple[str, ElasticModule]]:
        for name, m in self.body.named_modules():
            if isinstance(m, ElasticModule):
                yield name, m

    @contextmanager
    def select(self, cfg: SubnetConfig | dict) -> Iterator[Supernet]:
        """Activate the subnet ``cfg`` for the duration of the block; the previous state always comes back."""
        cfg = self._checked(cfg)
        saved = {name: m.elastic_state() for name, m in self._elastic()}
        try:
            for layer in self.family.trace(self.space, cfg):
                m = self.body.get_submodule(layer.path)
                m.set_elastic_state((layer.c_out,) if layer.kind == "batchnorm" else (layer.c_in, layer.c_out))
            for i, stage in enumerate(self.body.stages):
                stage.set_elastic_state((cfg.depths[f"stage{i}"],))
            yield self
        finally:
            for name, m in self._elastic():
                m.set_elastic_state(saved[name])

    def reorder_channels(self, criterion: str = "l1") -> dict[str, torch.Tensor]:
        """Sort every channel group by importance, in place, keeping the network's function."""
        from nasprune.elastic.importance import reorder_channels

        return reorder_channels(self, criterion)

    def num_params(self, cfg: SubnetConfig) -> int:
        """Parameter count of the subnet, from its config alone."""
        return sum(layer.params for layer in self.trace(cfg))

    def macs(self, cfg: SubnetConfig) -> int:
        """Multiply-accumulates of one forward pass at batch 1, from the config alone."""
        return sum(layer.macs for layer in self.trace(cfg))


def extract(supernet: Supernet, cfg: SubnetConfig | dict, cache: SliceCache | None = None) -> nn.Module:
    """A plain torch model of the subnet ``cfg``: physically smaller tensors, no elastic layers.

    Its output equals ``supernet`` under ``select(cfg)`` to float tolerance; train/eval mode is kept.
    ``cache`` shares weight copies between extractions of a supernet that no longer changes (the
    models are then read-only; see :func:`~nasprune.elastic.modules.export_module`).
    """
    with supernet.select(cfg):
        model = export_module(supernet.body, cache)
    return model.train(supernet.training)
