"""Elastic versions of a user's layers, made from the layers themselves (the same parameters).

Each takes its active channels as a *selection*: an ``int`` n (the leading n channels: a view, no
copy) or an index tensor (channels at several offsets, after a concatenation). Selections are set by
:meth:`GraphSupernet.select`, never by ``forward``. ``export()`` returns the plain torch layer at the
active size, holding copies of the active slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.elastic.attention import ElasticMultiheadAttention
from nasprune.elastic.modules import (
    ElasticModule,
    Sel,
    SliceCache,
    _ElasticWeighted,
    count,
    export_module,
    sel_key,
    take,
)


class _Weighted(_ElasticWeighted):
    """A conv/linear layer holding its source layer's parameters; ``in_sel``/``out_sel`` select its
    active input and output channels (``active_in``/``active_out`` are their counts)."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, source: nn.Module):
        ElasticModule.__init__(self)
        self.weight = source.weight
        self.bias = source.bias
        self.in_sel: Sel = self.weight.shape[1]
        self.out_sel: Sel = self.weight.shape[0]
        self.depthwise = False

    @property
    def active_in(self) -> int:
        return count(self.in_sel)

    @property
    def active_out(self) -> int:
        return count(self.out_sel)

    def active_weight(self) -> torch.Tensor:
        w = take(self.weight, 0, self.out_sel)
        return w if self.depthwise else take(w, 1, self.in_sel)

    def active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else take(self.bias, 0, self.out_sel)

    def _sizes(self) -> tuple:
        return (*sel_key(self.in_sel), "|", *sel_key(self.out_sel))

    def elastic_state(self) -> tuple:
        return (self.in_sel, self.out_sel)

    def set_elastic_state(self, state: tuple) -> None:
        self.in_sel, self.out_sel = state


class ElasticConv(_Weighted):
    """A Conv1d/Conv2d (plain, or depthwise: then input and output channels are the same selection)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d):
        super().__init__(conv)
        self.dims = 1 if isinstance(conv, nn.Conv1d) else 2
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.depthwise = conv.groups > 1
        if self.depthwise and not conv.groups == conv.in_channels == conv.out_channels:
            raise ValueError(f"grouped conv {conv} is not depthwise; the analysis freezes it")
        self._fn = F.conv1d if self.dims == 1 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = count(self.out_sel) if self.depthwise else 1
        return self._fn(x, self.active_weight(), self.active_bias(), self.stride, self.padding, self.dilation, groups)

    def _plain(self) -> nn.Module:
        c_out = count(self.out_sel)
        c_in = c_out if self.depthwise else count(self.in_sel)
        cls = nn.Conv1d if self.dims == 1 else nn.Conv2d
        return cls(
            c_in,
            c_out,
            tuple(self.weight.shape[2:]),
            self.stride,
            self.padding,
            self.dilation,
            groups=c_out if self.depthwise else 1,
            bias=self.bias is not None,
            device="meta",
        )


class ElasticLinear(_Weighted):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())

    def _plain(self) -> nn.Module:
        return nn.Linear(count(self.in_sel), count(self.out_sel), bias=self.bias is not None, device="meta")


class ElasticBatchNorm(ElasticModule):
    """BatchNorm1d/2d over the selected channels; their running statistics update in place."""

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d):
        super().__init__()
        self.cls = type(bn)
        self.eps, self.momentum, self.affine = bn.eps, bn.momentum, bn.affine
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.sel: Sel = bn.num_features

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        sel = self.sel
        mean, var = take(self.running_mean, 0, sel), take(self.running_var, 0, sel)
        weight = None if self.weight is None else take(self.weight, 0, sel)
        bias = None if self.bias is None else take(self.bias, 0, sel)
        y = F.batch_norm(x, mean, var, weight, bias, self.training, factor, self.eps)
        if self.training and not isinstance(sel, int):  # index_select copied them: write the update back
            with torch.no_grad():
                self.running_mean[sel] = mean
                self.running_var[sel] = var
        return y

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        c = count(self.sel)
        m = self.cls(c, eps=self.eps, momentum=self.momentum, affine=self.affine, device=self.running_mean.device)
        with torch.no_grad():
            if self.affine:
                m.weight.copy_(take(self.weight, 0, self.sel))
                m.bias.copy_(take(self.bias, 0, self.sel))
            m.running_mean.copy_(take(self.running_mean, 0, self.sel))
            m.running_var.copy_(take(self.running_var, 0, self.sel))
            m.num_batches_tracked.copy_(self.num_batches_tracked)
        return m.train(self.training)

    def elastic_state(self) -> tuple:
        return (self.sel,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.sel,) = state


class _AffineNorm(ElasticModule):
    """A norm without running statistics over the selected channels (its affine weight and bias sliced)."""

    def __init__(self, norm: nn.Module, channels: int):
        super().__init__()
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.sel: Sel = channels

    def _affine(self):
        w = None if self.weight is None else take(self.weight, 0, self.sel)
        b = None if self.bias is None else take(self.bias, 0, self.sel)
        return w, b

    def _copy_affine(self, m: nn.Module) -> nn.Module:
        w, b = self._affine()
        m = m.to(self.weight.device) if self.weight is not None else m
        with torch.no_grad():
            if w is not None:
                m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        return m

    def elastic_state(self) -> tuple:
        return (self.sel,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.sel,) = state


class ElasticLayerNorm(_AffineNorm):
    """LayerNorm over the selected features (the last dim: ``(N, C)`` or ``(N, tokens, C)``)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__(ln, ln.normalized_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (count(self.sel),), *self._affine(), self.eps)

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        affine = self.weight is not None
        return self._copy_affine(nn.LayerNorm(count(self.sel), eps=self.eps, elementwise_affine=affine,
                                              bias=self.bias is not None))  # fmt: skip


class ElasticGroupNorm(_AffineNorm):
    """GroupNorm keeping its channels per group: ``n`` active channels run as ``n / per_group`` groups
    (the space's widths are multiples of ``per_group``, and importance sorting moves whole groups)."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__(gn, gn.num_channels)
        self.per_group = gn.num_channels // gn.num_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, count(self.sel) // self.per_group, *self._affine(), self.eps)

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        c = count(self.sel)
        return self._copy_affine(nn.GroupNorm(c // self.per_group, c, eps=self.eps, affine=self.weight is not None))


class Skipped(nn.Identity):
    """A skipped block in an extracted model: its first input, whatever else it is called with (a
    Hugging Face encoder calls its layers with the attention mask too)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x


class Skippable(ElasticModule):
    """A residual block that a subnet may skip (its input and output shapes match): then it is the identity."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.keep = True

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.block(x, *args, **kwargs) if self.keep else x

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        return export_module(self.block, cache) if self.keep else Skipped()

    def elastic_state(self) -> tuple:
        return (self.keep,)

    def set_elastic_state(self, state: tuple) -> None:
        (self.keep,) = state


def elastic_of(module: nn.Module) -> ElasticModule:
    """The elastic version of a conv, linear or norm layer, sharing its parameters and buffers."""
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return ElasticConv(module)
    if type(module) is nn.Linear:
        return ElasticLinear(module)
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return ElasticBatchNorm(module)
    if type(module) is nn.LayerNorm:
        return ElasticLayerNorm(module)
    if type(module) is nn.GroupNorm:
        return ElasticGroupNorm(module)
    if type(module) is nn.MultiheadAttention:
        return ElasticMultiheadAttention(module)
    raise TypeError(f"no elastic version of {type(module).__name__}")
