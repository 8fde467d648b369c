"""The elastic-layer contract: full-size weights, of which the *active* slice runs.

Each layer holds its active sizes (set by :meth:`GraphSupernet.select`, never by ``forward``). Channels are
kept importance-ordered (:meth:`GraphSupernet.reorder_channels`), so the leading slice is the most
important one. ``export()`` returns a plain torch layer holding copies of the active slice: physically
smaller tensors. The layers themselves, made from a model's own layers, are in
:mod:`nasprune.elastic.layers`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from torch import nn

SliceCache = dict[tuple, torch.Tensor | nn.Module]
"""Contiguous copies of active weight slices and the exported conv/linear layers (and BatchNorm
prototypes) holding them, keyed by (layer, what, sizes); see :func:`export_module`."""


Sel = int | torch.Tensor
"""Active channels: the leading ``n``, or these indices."""


def take(t: torch.Tensor, dim: int, sel: Sel) -> torch.Tensor:
    if isinstance(sel, int):
        return t if sel == t.shape[dim] else t.narrow(dim, 0, sel)
    return t.index_select(dim, sel if sel.device == t.device else sel.to(t.device))


def count(sel: Sel) -> int:
    return sel if isinstance(sel, int) else int(sel.numel())


def sel_key(sel: Sel) -> tuple:
    return (sel,) if isinstance(sel, int) else tuple(sel.tolist())


def _copy(t: torch.Tensor, cache: SliceCache | None = None, key: tuple = ()) -> nn.Parameter:
    """A contiguous copy of a (sliced) tensor as a new parameter; with ``cache``, one copy per ``key``
    shared by every module exported with that cache (read-only: ``requires_grad`` is off)."""
    if cache is None:
        return nn.Parameter(t.detach().clone(memory_format=torch.contiguous_format))
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = t.detach().clone(memory_format=torch.contiguous_format)
    return nn.Parameter(hit, requires_grad=False)


class ElasticModule(nn.Module, ABC):
    """A layer whose active size is set from outside (by ``GraphSupernet.select``), never by ``forward``."""

    @abstractmethod
    def export(self, cache: SliceCache | None = None) -> nn.Module:
        """A plain torch module equal to this layer at its active size (``cache``: see :func:`export_module`)."""

    @abstractmethod
    def elastic_state(self) -> tuple:
        """The active sizes, to be restored later by :meth:`set_elastic_state`."""

    @abstractmethod
    def set_elastic_state(self, state: tuple) -> None: ...


class _ElasticWeighted(ElasticModule):
    """A layer with ``weight[out, in, ...]`` and optional ``bias[out]``, run as their leading slices."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def active_weight(self) -> torch.Tensor:
        return self.weight[: self.active_out, : self.active_in]

    def active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[: self.active_out]

    @abstractmethod
    def _plain(self) -> nn.Module:
        """The plain layer at the active sizes, on the meta device (no storage, no initialisation)."""

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        """The plain layer holding copies of the active slices. With ``cache``, the layer itself is
        built once per sizes and shared (read-only) by every subnet exported with that cache: it has
        no state but its weights, and building modules was most of what extraction cost."""
        sizes = self._sizes()
        if cache is not None and (hit := cache.get((id(self), "module", *sizes))) is not None:
            return hit
        m = self._plain()
        m.weight = _copy(self.active_weight(), cache, (id(self), "weight", *sizes))
        if self.bias is not None:
            m.bias = _copy(self.active_bias(), cache, (id(self), "bias", *sizes))
        if cache is not None:
            cache[(id(self), "module", *sizes)] = m
        return m

    def _sizes(self) -> tuple:
        """What identifies the active slice in cache keys."""
        return (self.active_in, self.active_out)

    def elastic_state(self) -> tuple:
        return (self.active_in, self.active_out)

    def set_elastic_state(self, state: tuple) -> None:
        self.active_in, self.active_out = state

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape[:2]
        return f"{c_in}->{c_out} (active {self.active_in}->{self.active_out})"


def export_module(module: nn.Module, cache: SliceCache | None = None) -> nn.Module:
    """Replace, in a copy, every elastic layer by its plain active-size equivalent.

    With a ``cache`` (a dict kept by the caller for one unchanging supernet), conv and linear
    weights are copied once per (layer, sizes) and shared, read-only, by every module exported with
    it: scoring many subnets then copies each slice once instead of once per subnet. BatchNorm
    statistics are always fresh copies.
    """
    if isinstance(module, ElasticModule):
        return module.export(cache)
    out = copy.copy(module)
    out._modules = {name: export_module(child, cache) for name, child in module._modules.items()}
    out._parameters = {
        k: (None if v is None else nn.Parameter(v.detach().clone())) for k, v in module._parameters.items()
    }
    out._buffers = {k: (None if v is None else v.detach().clone()) for k, v in module._buffers.items()}
    return out
