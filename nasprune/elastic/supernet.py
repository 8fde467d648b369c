"""The supernet: the largest model of a space, of which every subnet is a slice.

:class:`Supernet` is the contract the trainer, evaluator, exporter and search read; its one
implementation is :class:`~nasprune.graph.supernet.GraphSupernet` (a model converted in place, for a
user's model and the built-in ones alike). :func:`extract` makes a subnet a plain torch model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch
from torch import nn

from nasprune.elastic.modules import ElasticModule, SliceCache, export_module
from nasprune.space import SubnetConfig


class Supernet(nn.Module):
    """Holds the elastic ``body`` of a space. ``with supernet.select(cfg): supernet(x)`` runs a subnet."""

    space: object
    body: nn.Module

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The body on its inputs: one tensor, or several (token ids and an attention mask)."""
        return self.body(x, *inputs)

    def _checked(self, cfg: SubnetConfig | dict) -> SubnetConfig:
        return self.space.parse_config(cfg)

    def _elastic(self) -> Iterator[tuple[str, ElasticModule]]:
        for name, m in self.body.named_modules():
            if isinstance(m, ElasticModule):
                yield name, m

    @abstractmethod
    def select(self, cfg: SubnetConfig | dict) -> AbstractContextManager[Supernet]:
        """Activate the subnet ``cfg`` for the duration of a ``with`` block; the previous state comes back."""

    @abstractmethod
    def trace(self, cfg: SubnetConfig) -> list:
        """Every conv/linear/norm that runs for ``cfg``, with its active channels, in network order."""

    @abstractmethod
    def reorder_channels(self, scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Sort every channel group by importance, in place, keeping the network's function."""

    @abstractmethod
    def num_params(self, cfg: SubnetConfig) -> int:
        """Parameter count of the subnet, from its config alone."""

    def macs(self, cfg: SubnetConfig) -> int:
        """Multiply-accumulates of one forward pass at batch 1, from the config alone."""
        return sum(layer.macs for layer in self.trace(cfg))


def extract(supernet: Supernet, cfg: SubnetConfig | dict, cache: SliceCache | None = None) -> nn.Module:
    """A plain torch model of the subnet ``cfg``: physically smaller tensors, no elastic layers.

    Its output equals ``supernet`` under ``select(cfg)`` to float tolerance; train/eval mode is kept.
    Its BatchNorm statistics are the supernet's shared ones, which fit no single subnet: recalibrate
    them before use (``nasprune.evaluate.recalibrate_bn``, or ``Evaluator.subnet(cfg)``, which
    extracts and recalibrates as the search does), or a small subnet may predict one class for all.
    ``cache`` shares weight copies between extractions of a supernet that no longer changes (the
    models are then read-only; see :func:`~nasprune.elastic.modules.export_module`).
    """
    with supernet.select(cfg):
        model = export_module(supernet.body, cache)
    return model.train(supernet.training)
