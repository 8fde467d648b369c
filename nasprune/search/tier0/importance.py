"""How much the loss grows when a channel or a skippable block is removed, from calibration data alone.

Removing channel ``c`` of a channel group is the same, for the network's output, as zeroing ``c`` in
the input of every conv/linear layer that reads the group (a depthwise conv or a norm passes the
channel on, so it is not a reader): every path from the channel to the output goes through such a
reader, because the network's own outputs are never a group. So each reader's input gets a *mask*
``m_c`` (1: kept), shared by all readers of the channel, and for every calibration example ``i``

    g_ic = dL_i / dm_c at m = 1 = sum over readers and positions of  x * dL_i/dx  (that reader's input)

Removing a skippable block is ``y = x + m_b * (block(x) - x)`` at ``m_b = 0``, so
``g_ib = sum (block(x) - x) * dL_i/dy``. From these per-example gradients (cross-entropy on the labels,
the model in eval mode so examples are independent):

- ``fisher`` (Kwon et al. 2022): ``0.5 * mean_i g_i**2``, the second-order loss increase with the
  empirical Fisher standing in for the Hessian (the model is trained, so the mean gradient is ~0);
- ``taylor`` (Molchanov et al. 2019, on masks): ``|mean_i g_i|``, the first-order estimate;
- ``l1``: the summed L1 norm of the filters writing a channel (:meth:`GraphSupernet.l1_importance`,
  the supernet's default order); it has no loss scale and no block score.

Each estimate is in loss units per channel, so the scores of different groups and of blocks add up:
the knapsack (:mod:`nasprune.search.tier0.knapsack`) sums them. ``benchmarks/tier0.py`` measures how
well each predicts the measured loss change (docs/tier0.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasprune.elastic.layers import Skippable
from nasprune.evaluate import recalibrate_bn
from nasprune.graph.supernet import extract
from nasprune.search.tier0.knapsack import Values

KINDS = ("fisher", "taylor", "l1")


@dataclass(frozen=True)
class Importance:
    """Per channel group (every group of the analysis) one score per channel, in the supernet's current
    channel order; per skippable block path one score; what they are and what computing them took."""

    kind: str
    channels: dict[str, torch.Tensor]
    blocks: dict[str, float]
    n_samples: int
    seconds: float

    def permuted(self, perms: dict[str, torch.Tensor]) -> Importance:
        """The same scores after :meth:`GraphSupernet.reorder_channels` applied ``perms``."""
        channels = {g: s[perms[g]] if g in perms else s for g, s in self.channels.items()}
        return Importance(self.kind, channels, self.blocks, self.n_samples, self.seconds)


def estimate(supernet, x: torch.Tensor, y: torch.Tensor, kind: str = "fisher", batch_size: int = 128) -> Importance:
    """Scores of every channel group and skippable block of ``supernet`` (its full network, as trained)
    on examples ``x`` with labels ``y`` (the calibration split). The supernet is left as it was."""
    if kind not in KINDS:
        raise ValueError(f"importance kind '{kind}' is not one of {', '.join(KINDS)}")
    t0 = time.perf_counter()
    a = supernet.analysis
    if kind == "l1":
        channels = {g: supernet.l1_importance(g) for g in a.groups}
        return Importance(kind, channels, {}, 0, time.perf_counter() - t0)
    grads = _mask_gradients(supernet, x, y, batch_size)
    channels, blocks = {}, {}
    for name, g in grads.items():
        score = 0.5 * g.pow(2).mean(0) if kind == "fisher" else g.mean(0).abs()
        if name in a.groups:
            channels[name] = score.float()
        else:
            blocks[name] = float(score)
    return Importance(kind, channels, blocks, len(y), time.perf_counter() - t0)


def _mask_gradients(supernet, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Per group ``(n, channels)`` and per skippable block ``(n,)``: the per-example gradients of the loss
    with respect to the channel and block masks (float64)."""
    a = supernet.analysis
    readers = [u for u in a.layers.values() if u.kind in ("conv1d", "conv2d", "linear") and not u.depthwise]
    sizes = {g: a.group_size[g] for g in a.groups}
    blocks = {path: m for path, m in supernet.body.named_modules() if isinstance(m, Skippable)}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in [*sizes, *blocks]}
    current: dict[str, torch.Tensor] = {}

    def reader_hook(layout):
        def pre(_module, args):
            inp = args[0] * 1.0  # this reader's own copy: its gradient is this reader's alone
            if inp.requires_grad:

                def on_grad(grad, inp=inp.detach()):
                    per = (inp * grad).double()
                    per = per.transpose(0, 1).flatten(2).sum(2) if per.dim() > 2 else per.transpose(0, 1)
                    off = 0
                    for seg in layout:
                        g = a.var_group.get(a.var_root[seg.var])
                        if g in current:
                            current[g] += per[off : off + seg.features].reshape(seg.size, seg.repeat, -1).sum(1).T
                        off += seg.features

                inp.register_hook(on_grad)
            return (inp, *args[1:])

        return pre

    def block_hook(name):
        def fwd(_module, args, output):
            if output.requires_grad:
                delta = (output - args[0]).detach()

                def on_grad(grad):
                    current[name] += (delta * grad).double().flatten(1).sum(1)

                output.register_hook(on_grad)

        return fwd

    handles = []
    for use in readers:
        handles.append(supernet._module(use.path).register_forward_pre_hook(reader_hook(use.in_layout)))
    for name, m in blocks.items():
        handles.append(m.register_forward_hook(block_hook(name)))
    was = supernet.training
    supernet.eval()
    flags = [p.requires_grad for p in supernet.parameters()]
    try:
        for p in supernet.parameters():
            p.requires_grad_(True)
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            n = len(yb)
            current.clear()
            current.update({g: torch.zeros(n, s, dtype=torch.float64) for g, s in sizes.items()})
            current.update({b: torch.zeros(n, dtype=torch.float64) for b in blocks})
            loss = F.cross_entropy(supernet(xb), yb, reduction="sum")
            supernet.zero_grad(set_to_none=True)
            loss.backward()
            for name, v in current.items():
                out[name].append(v.clone())
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(supernet.parameters(), flags, strict=True):
            p.requires_grad_(f)
        supernet.zero_grad(set_to_none=True)
        supernet.train(was)
    return {name: torch.cat(v) for name, v in out.items()}


def measured_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Mean cross-entropy of ``model`` (eval mode) on ``x``, ``y``."""
    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            total += float(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="sum"))
    model.train(was)
    return total / len(y)


ONE_BATCH_FLOATS = 1 << 22
"""Above this many input floats, :func:`measure_choices` recalibrates and evaluates in batches (two passes)."""


def measure_choices(supernet, x: torch.Tensor, y: torch.Tensor, max_examples: int = 512, batch_size: int = 128):
    """The loss increase of each choice alone, measured: per group and width (everything else at its
    largest) and per sequence and depth, the subnet's mean cross-entropy on (the first ``max_examples``
    of) ``x``, ``y`` with its BatchNorm statistics recalibrated on them, less the full network's
    (recalibrated alike). Made monotone (keeping more never costs more) and floored at 0. One forward
    pass per choice: the examples go through as one batch with the BatchNorms normalising by that
    batch's statistics, which *are* the recalibrated statistics of those examples (for large inputs,
    above :data:`ONE_BATCH_FLOATS`, a recalibration pass and an evaluation pass in ``batch_size`` batches).

    Where the per-channel scores of :func:`estimate` are local (a quadratic at the trained weights),
    these hold for large removals too: on ``resnet_mnist`` the Fisher estimate ranked single choices
    well (Spearman 0.9) but put removing stage 3's two blocks at 0.008 where it measured 0.95."""
    space = supernet.space
    largest = space.largest()
    x, y = x[:max_examples], y[:max_examples]

    one_batch = x.numel() <= ONE_BATCH_FLOATS

    @torch.no_grad()
    def loss_of(cfg) -> float:
        model = extract(supernet, cfg).eval()
        if not one_batch:
            recalibrate_bn(model, (x[i : i + batch_size] for i in range(0, len(x), batch_size)))
            return measured_loss(model, x, y, batch_size)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()  # normalise by the batch's statistics: the recalibrated ones
        return float(F.cross_entropy(model(x), y))

    base = loss_of(largest)
    groups: dict[str, dict[int, float]] = {}
    for g, group in space.groups.items():
        groups[g] = {max(group.widths): 0.0}
        for w in group.widths[:-1]:
            groups[g][w] = loss_of(space.config(largest.depths, {**largest.widths, g: w})) - base
    sequences: dict[str, dict[int, float]] = {}
    for s, seq in space.sequences.items():
        sequences[s] = {max(seq.depths): 0.0}
        for d in seq.depths[:-1]:
            sequences[s][d] = loss_of(space.config({**largest.depths, s: d}, largest.widths)) - base
    return Values({g: _monotone(v) for g, v in groups.items()}, {s: _monotone(v) for s, v in sequences.items()})


def _monotone(values: dict[int, float]) -> dict[int, float]:
    """Non-increasing in the choice (more channels or blocks kept never lose more), at least 0."""
    out, running = {}, 0.0
    for choice in sorted(values, reverse=True):
        running = max(running, values[choice])
        out[choice] = running
    return out


__all__ = ["KINDS", "Importance", "estimate", "measure_choices", "measured_loss"]
