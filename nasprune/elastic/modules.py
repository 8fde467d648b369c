"""Elastic layers: full-size weights, of which the *active* leading slice runs.

Each layer holds ``active_in``/``active_out`` (set by :meth:`Supernet.select`, never by ``forward``)
and slices ``weight[:active_out, :active_in]``. Channels are kept importance-ordered (see
:mod:`nasprune.elastic.importance`), so the leading slice is the most important one. ``export()``
returns a plain torch layer holding copies of the active slice: physically smaller tensors.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

SliceCache = dict[tuple, torch.Tensor | nn.Module]
"""Contiguous copies of active weight slices and the exported conv/linear layers (and BatchNorm
prototypes) holding them, keyed by (layer, what, sizes); see :func:`export_module`."""


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
    """A layer whose active size is set from outside (by ``Supernet.select``), never by ``forward``."""

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


class ElasticConv2d(_ElasticWeighted):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.active_in, self.active_out = c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(), self.active_bias(), self.stride, self.padding)

    def _plain(self) -> nn.Conv2d:
        has_bias = self.bias is not None
        return nn.Conv2d(
            self.active_in, self.active_out, self.kernel, self.stride, self.padding, bias=has_bias, device="meta"
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.kernel}, s={self.stride}"


class ElasticLinear(_ElasticWeighted):
    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__()
        ref = nn.Linear(c_in, c_out, bias=bias)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.active_in, self.active_out = c_in, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())

    def _plain(self) -> nn.Linear:
        return nn.Linear(self.active_in, self.active_out, bias=self.bias is not None, device="meta")


class _ElasticBatchNorm(ElasticModule):
    """BatchNorm over the leading ``active`` features; running stats of that slice update in place."""

    _plain: type[nn.modules.batchnorm._BatchNorm]

    def __init__(self, c: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.active = c

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active
        if self.training:
            self.num_batches_tracked.add_(1)
            # momentum=None means a cumulative average (used by BN recalibration).
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            factor,
            self.eps,
        )

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        """Running statistics are always fresh copies, even with ``cache``: recalibration writes them.
        With ``cache``, the affine weight and bias are shared read-only and the module is a shallow
        copy of a prototype (cheaper than building one)."""
        c = self.active
        if cache is not None:
            proto = cache.get((id(self), "norm", c))
            if proto is None:
                proto = self._plain(c, eps=self.eps, momentum=self.momentum, device="meta")
                proto.weight = _copy(self.weight[:c], cache, (id(self), "weight", c))
                proto.bias = _copy(self.bias[:c], cache, (id(self), "bias", c))
                cache[(id(self), "norm", c)] = proto
            m = copy.copy(proto)  # own __dict__; the dicts below are made its own too
            m._parameters = dict(proto._parameters)
            m._buffers = {
                "running_mean": self.running_mean[:c].clone(),
                "running_var": self.running_var[:c].clone(),
                "num_batches_tracked": self.num_batches_tracked.clone(),
            }
            m._modules = {}
            m.train(self.training)
            return m
        m = self._plain(c, eps=self.eps, momentum=self.momentum)
        with torch.no_grad():
            m.weight.copy_(self.weight[:c])
            m.bias.copy_(self.bias[:c])
            m.running_mean.copy_(self.running_mean[:c])
            m.running_var.copy_(self.running_var[:c])
            m.num_batches_tracked.copy_(self.num_batches_tracked)
        m.train(self.training)
        return m

    def elastic_state(self) -> tuple:
        return (self.active,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.active,) = state

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} (active {self.active})"


class ElasticBatchNorm2d(_ElasticBatchNorm):
    _plain = nn.BatchNorm2d


class ElasticBatchNorm1d(_ElasticBatchNorm):
    _plain = nn.BatchNorm1d


class ElasticLayerNorm(ElasticModule):
    """LayerNorm over the leading ``active`` features of the last dimension (for transformer blocks)."""

    def __init__(self, c: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.active = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active
        return F.layer_norm(x, (c,), self.weight[:c], self.bias[:c], self.eps)

    def export(self, cache: SliceCache | None = None) -> nn.LayerNorm:
        m = nn.LayerNorm(self.active, eps=self.eps)
        with torch.no_grad():
            m.weight.copy_(self.weight[: self.active])
            m.bias.copy_(self.bias[: self.active])
        return m

    def elastic_state(self) -> tuple:
        return (self.active,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.active,) = state


class ElasticDepth(ElasticModule):
    """A stage whose forward runs only its first ``active_depth`` blocks."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.active_depth = len(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[: self.active_depth]:
            x = block(x)
        return x

    def export(self, cache: SliceCache | None = None) -> nn.Sequential:
        return nn.Sequential(*[export_module(b, cache) for b in self.blocks[: self.active_depth]])

    def elastic_state(self) -> tuple:
        return (self.active_depth,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.active_depth,) = state


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
