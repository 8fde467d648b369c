"""Accuracy of subnets read from a supernet's shared weights, after BatchNorm recalibration.

Shared BatchNorm statistics are a mix over every subnet trained; a subnet's own statistics are
re-estimated on a calibration subset (cumulative average) before it is scored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from nasprune.data import Dataset
from nasprune.elastic.layers import ElasticBatchNorm
from nasprune.elastic.modules import SliceCache
from nasprune.graph.supernet import GraphSupernet, extract
from nasprune.space import SubnetConfig


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are (inputs go there); CPU for a model without any."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _norms(model: nn.Module) -> list[nn.Module]:
    kinds = nn.modules.batchnorm._BatchNorm | ElasticBatchNorm
    return [m for m in model.modules() if isinstance(m, kinds)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor | tuple]) -> nn.Module:
    """Re-estimate every BatchNorm's running stats as the exact average over ``batches``.

    Resets the stats, runs the batches in train mode with ``momentum=None`` (cumulative average),
    then puts back each norm's momentum and the model's train/eval mode.
    """
    norms = _norms(model)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        device = _device_of(model)
        for batch in batches:
            x = batch[0] if isinstance(batch, tuple | list) else batch
            model(x.to(device))
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return model


@torch.no_grad()
def accuracy_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode."""
    was = model.training
    model.eval()
    correct, device = 0, _device_of(model)
    for i in range(0, len(y), batch_size):
        correct += (model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    model.train(was)
    return correct / len(y)


@dataclass(frozen=True)
class PerExample:
    """A model's result on each example of a split: right or wrong, and the cross-entropy loss."""

    correct: torch.Tensor  # bool, one per example
    loss: torch.Tensor  # float64, one per example

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())


@torch.no_grad()
def per_example_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> PerExample:
    """``model``'s correctness and loss on every example, in eval mode."""
    was = model.training
    model.eval()
    correct, loss, device = [], [], _device_of(model)
    for i in range(0, len(y), batch_size):
        logits, target = model(x[i : i + batch_size].to(device)).cpu(), y[i : i + batch_size]
        correct.append(logits.argmax(1) == target)
        loss.append(nn.functional.cross_entropy(logits.double(), target, reduction="none"))
    model.train(was)
    return PerExample(torch.cat(correct), torch.cat(loss))


class Evaluator:
    """Scores subnets of one trained supernet on one dataset; results are cached per config key.

    ``checkpoint_id`` (the checkpoint's hash) is part of the cache key, so a retrained supernet
    never reuses stale scores.
    """

    def __init__(
        self, supernet: GraphSupernet, dataset: Dataset, checkpoint_id: str = "untrained", calib_batch: int = 250
    ):
        self.supernet = supernet.eval()
        self.dataset = dataset
        self.checkpoint_id = checkpoint_id
        self.calib_batch = calib_batch
        self._cache: dict[tuple[str, str, str], float] = {}
        self._examples: dict[tuple[str, str, str], PerExample] = {}
        self._slices: SliceCache = {}

    def subnet(self, cfg: SubnetConfig) -> nn.Module:
        """The extracted subnet with BatchNorm recalibrated on the calibration split, in eval mode.

        Its conv/linear weights are shared with the other subnets of this evaluator (copied once per
        layer and size): use it for inference and export, train a fresh ``extract`` instead.
        """
        model = extract(self.supernet, cfg, self._slices)
        x, _ = self.dataset.tensors("calib")
        recalibrate_bn(model, (x[i : i + self.calib_batch] for i in range(0, len(x), self.calib_batch)))
        return model.eval()

    def accuracy(self, cfg: SubnetConfig, split: str = "val") -> float:
        key = (cfg.key(), self.checkpoint_id, split)
        if key not in self._cache:
            x, y = self.dataset.tensors(split)
            self._cache[key] = accuracy_of(self.subnet(cfg), x, y)
        return self._cache[key]

    def per_example(self, cfg: SubnetConfig, split: str = "val") -> PerExample:
        """Which examples of ``split`` the subnet gets right, and its loss on each (cached).

        The search's accuracy on a few hundred images moves in steps of 1/n; these are what a paired
        comparison of two subnets on the same images needs (:mod:`nasprune.search.select`)."""
        key = (cfg.key(), self.checkpoint_id, split)
        if key not in self._examples:
            x, y = self.dataset.tensors(split)
            self._examples[key] = per_example_of(self.subnet(cfg), x, y)
        return self._examples[key]


def accuracy(supernet: GraphSupernet, cfg: SubnetConfig, dataset: Dataset, split: str = "val") -> float:
    """One-off accuracy of a subnet after BN recalibration (use :class:`Evaluator` to cache)."""
    return Evaluator(supernet, dataset).accuracy(cfg, split)
