"""Repair a pruned subnet without training: BatchNorm recalibration, then least-squares reconstruction.

What the reconstruction solves, exactly: for each conv/linear layer ``l`` of the pruned model (in the
order the network runs them; by default every one, since the error earlier layers leave reaches layers
whose own input kept all its channels too; ``all_layers=False``: only those whose input lost channels),
with ``X`` the layer's input in the *pruned*
model (as repaired so far, BatchNorm recalibrated) and ``Y`` the *original* model's output of that
layer at the channels the subnet keeps, both on the calibration split,

    W* = argmin_W ||X W^T - Y||^2 + lam ||W - W0||^2,     lam = ridge * mean(diag(X^T X))

where ``W0`` is the layer's inherited weight (the kept slice of the original) and, for a conv, each row
of ``X`` is one output position's receptive field (im2col: ``F.unfold``), so ``W`` is the flattened
kernel. The normal equations ``(X^T X + lam I) W^T = X^T Y + lam W0^T`` are solved in float64. Each
layer then computes, on the calibration inputs it now receives, as close to what the original's layer
computed as a linear map of the remaining channels can: the kept filters absorb what the removed
input channels contributed where it is linearly predictable from the kept ones, and the error the
layers before it left (this is the convolutional form of Kwon et al.'s layer-wise "mask tuning" and
of He et al. 2017's channel reconstruction). Regularising towards ``W0`` (not 0) keeps a layer where
it was when the calibration rows say little.

Bounds: at most ``max_rows`` rows (output positions, sampled uniformly without replacement from the
calibration split) per layer, and layers with more than ``max_features`` inputs (``c_in * k * k``)
are left as they are, so memory stays below ``max_rows * max_features * 4`` bytes plus the
``max_features**2`` normal matrix; ``max_seconds`` stops the pass (later layers keep their weights).
Depthwise convs (one input channel per output) and layers with non-zero padding modes are left alone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.elastic.layers import count
from nasprune.evaluate import recalibrate_bn


@dataclass(frozen=True)
class LayerFit:
    """One refitted layer: rows and features of its problem, relative squared error before and after
    (``||X W^T - Y||^2 / ||Y||^2`` on the calibration rows), seconds."""

    path: str
    rows: int
    features: int
    error_before: float
    error_after: float
    seconds: float


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not computed."""


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _run_until(model: nn.Module, module: nn.Module, x: torch.Tensor, pre: bool, batch_size: int, train: bool = False):
    """Per batch of ``x``, the input (``pre``) or output of ``module``, stopping the forward pass there."""
    got: list[torch.Tensor] = []

    def hook(_m, args, out=None):
        got.append((args[0] if pre else out).detach())
        raise _Stop

    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    was = model.training
    model.train(train)
    try:
        for i in range(0, len(x), batch_size):
            with contextlib.suppress(_Stop):
                model(x[i : i + batch_size])
            yield got.pop()
    finally:
        handle.remove()
        model.train(was)


@torch.no_grad()
def _recalibrate_until(model: nn.Module, module: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """BatchNorm statistics re-estimated (cumulative average) for the norms that run before ``module``."""
    norms = _batchnorms(model)
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        for _ in _run_until(model, module, x, pre=True, batch_size=batch_size, train=True):
            pass
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom


def _rows(layer: nn.Module, inp: torch.Tensor) -> torch.Tensor | None:
    """The layer's input as one row per output position (im2col for a conv), or None if it cannot be."""
    if isinstance(layer, nn.Linear):
        return inp.reshape(-1, inp.shape[-1])
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return None
        if isinstance(layer, nn.Conv1d):
            cols = F.unfold(inp.unsqueeze(2), (1, *layer.kernel_size), (1, *layer.dilation), (0, *layer.padding),
                            (1, *layer.stride))  # fmt: skip
        else:
            cols = F.unfold(inp, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return None


def _out_rows(layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear) or out.dim() == 2:
        return out.reshape(-1, out.shape[-1])
    return out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1])


def _take(layer: nn.Module, out: torch.Tensor, sel) -> torch.Tensor:
    dim = out.dim() - 1 if isinstance(layer, nn.Linear) else 1
    if isinstance(sel, int):
        return out.narrow(dim, 0, sel)
    return out.index_select(dim, sel)


def _chunks(pick: torch.Tensor, per_example: int, n: int, batch_size: int) -> list[torch.Tensor]:
    """The sorted row indices ``pick`` (over all ``n`` examples' rows) split per batch, made batch-local."""
    out = []
    for i in range(0, n, batch_size):
        lo, hi = i * per_example, min(i + batch_size, n) * per_example
        out.append(pick[(pick >= lo) & (pick < hi)] - lo)
    return out


def reconstruct(
    pruned: nn.Module,
    supernet,
    cfg,
    x: torch.Tensor,
    *,
    ridge: float = 1e-2,
    max_rows: int = 4096,
    max_features: int = 4096,
    batch_size: int = 250,
    max_seconds: float | None = None,
    all_layers: bool = True,
    seed: int = 0,
) -> list[LayerFit]:
    """Refit, in place and in network order, the conv/linear layers of ``pruned`` (the subnet ``cfg``
    extracted from ``supernet``, whose full network is the original; with ``all_layers`` off, only those
    whose input lost channels) to the original's outputs on ``x``; see the module docstring. BatchNorm
    statistics are recalibrated on ``x`` before each layer's inputs are read and once at the end."""
    import math

    t_start = time.perf_counter()
    a = supernet.analysis
    cfg = supernet.space.parse_config(cfg)
    widths = a.widths(cfg.widths)
    skipped = supernet.space.skipped_blocks(cfg.depths)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    todo = []  # (path, pruned layer, original layer, output selection, rows per example, sampled rows)
    for use in a.layers.values():
        if use.kind not in ("conv1d", "conv2d", "linear") or use.depthwise or supernet._inside(use.path, skipped):
            continue
        in_sel = supernet._sel(use.in_layout, widths)
        if not all_layers and count(in_sel) == sum(seg.features for seg in use.in_layout):
            continue
        layer = pruned.get_submodule(use.path)
        per = math.prod(use.out_shape[2:]) if use.kind != "linear" else math.prod(use.out_shape[1:-1])
        pick = torch.randperm(n * per, generator=gen)[:max_rows].sort().values
        todo.append((use.path, layer, supernet._module(use.path), supernet._sel(use.out_layout, widths), per, pick))
    if not todo:
        return []
    # the original's outputs at the sampled rows, every layer in one pass
    targets: dict[str, list[torch.Tensor]] = {path: [] for path, *_ in todo}
    local = {path: _chunks(pick, per, n, batch_size) for path, _, _, _, per, pick in todo}
    handles = []
    for path, layer, original, out_sel, _per, _pick in todo:

        def keep(_m, _args, out, path=path, layer=layer, out_sel=out_sel):
            rows = _out_rows(layer, _take(layer, out.detach(), out_sel))
            targets[path].append(rows[local[path][len(targets[path])]])

        handles.append(original.register_forward_hook(keep))
    supernet_was = supernet.training
    supernet.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                supernet(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
        supernet.train(supernet_was)
    has_bn = bool(_batchnorms(pruned))
    fits: list[LayerFit] = []
    for path, layer, _original, _sel, _per, _pick in todo:
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
        t0 = time.perf_counter()
        if has_bn:
            _recalibrate_until(pruned, layer, x, batch_size)
        xs, ok = [], True
        for rows_at, inp in zip(local[path], _run_until(pruned, layer, x, pre=True, batch_size=batch_size),
                                strict=True):  # fmt: skip
            rows = _rows(layer, inp)
            if rows is None or rows.shape[1] + (layer.bias is not None) > max_features:
                ok = False
                break
            xs.append(rows[rows_at])
        if ok:
            fits.append(_solve(layer, path, torch.cat(xs), torch.cat(targets[path]), ridge, t0))
    if has_bn:
        recalibrate_bn(pruned, (x[i : i + batch_size] for i in range(0, n, batch_size)))
    return fits


@torch.no_grad()
def _solve(layer: nn.Module, path: str, xr: torch.Tensor, yr: torch.Tensor, ridge: float, t0: float) -> LayerFit:
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    xr, yr = xr.double(), yr.double()
    if layer.bias is not None:
        xr = torch.cat([xr, torch.ones(len(xr), 1, dtype=xr.dtype)], 1)
        w0 = torch.cat([w0, layer.bias.detach().double()[:, None]], 1)
    gram = xr.T @ xr
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    rhs = xr.T @ yr + lam * w0.T
    w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), rhs).T
    denom = float(yr.pow(2).sum()) or 1.0
    before = float((xr @ w0.T - yr).pow(2).sum()) / denom
    after = float((xr @ w.T - yr).pow(2).sum()) / denom
    if after < 0.999 * before:  # a layer whose input did not change fits itself: keep it as it was
        if layer.bias is not None:
            layer.bias.copy_(w[:, -1].to(layer.bias.dtype))
            w = w[:, :-1]
        layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))
    else:
        after = before
    return LayerFit(path, len(xr), xr.shape[1], before, after, time.perf_counter() - t0)


__all__ = ["LayerFit", "reconstruct"]
