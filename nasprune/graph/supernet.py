"""A supernet made from a user's model: its layers converted in place to elastic ones.

``space_from_analysis`` turns an :class:`~nasprune.graph.analyze.Analysis` into a
:class:`~nasprune.space.GraphSpace`; ``GraphSupernet`` converts the model the space was derived from
and runs any config of the space (``select``), extracts it (``extract``), counts its parameters and
MACs, and sorts channels by importance. The per-config shape propagation is :meth:`GraphSupernet.trace`:
spatial sizes never change with widths or skipped blocks (skipped blocks preserve shapes), so it
reads the shapes the analysis recorded and only the channel counts follow the config.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from nasprune.elastic.attention import COMPOSED
from nasprune.elastic.layers import ElasticConv, Sel, Skippable, elastic_of
from nasprune.elastic.modules import ElasticModule, SliceCache, export_module
from nasprune.errors import GraphError
from nasprune.graph.analyze import Analysis, Layout, active_count, active_parts, analyze_model
from nasprune.graph.inputs import example_inputs
from nasprune.space import DepthSequence, GraphSpace, SubnetConfig, WidthGroup

DEFAULT_MIN_FRACTION = 0.25
DEFAULT_MAX_CHOICES = 8


def width_choices(
    size: int,
    divisor: int = 8,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    block: int = 1,
    max_choices: int = DEFAULT_MAX_CHOICES,
) -> list[int]:
    """Multiples of ``lcm(divisor, block)`` from ``min_fraction`` of ``size`` up to ``size``, and ``size``
    itself; at most ``max_choices`` of them, evenly spaced in multiples of the step (a latency table
    measures every width pair of a layer, so the count of choices is what its size grows with)."""
    step = math.lcm(divisor, block)
    lo = max(step, math.ceil(min_fraction * size / step) * step)
    widths = sorted({*range(lo, size + 1, step), size})
    if len(widths) <= max_choices:
        return widths
    stride = math.ceil((len(widths) - 1) / (max_choices - 1))
    return sorted({*widths[::-1][::stride], widths[0]})


def space_from_analysis(
    analysis: Analysis,
    name: str,
    model: str,
    num_classes: int,
    dataset: str = "",
    model_kwargs: dict | None = None,
    channel_divisor: int = 8,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_choices: int = DEFAULT_MAX_CHOICES,
    description: str = "",
    input_kind: str = "tensor",
) -> GraphSpace:
    """The search space of an analysed model: widths per channel group, depths per block sequence.
    ``input_kind``: what the model was analysed with (:func:`nasprune.graph.inputs.example_inputs`).

    Groups with a single width choice (narrower than two steps of the divisor) are left out: they
    stay at full width, as :func:`fixed_groups` reports.
    """
    groups = {}
    for g, size in analysis.group_size.items():
        unit = analysis.group_unit.get(g, "channels")
        if unit == "heads":  # a width in heads, any count of them (heads of head_dim channels, or one each)
            widths = width_choices(size // analysis.unit_channels(g), 1, min_fraction, 1, max_choices)
        else:
            widths = width_choices(size, channel_divisor, min_fraction, analysis.group_block[g], max_choices)
        if len(widths) > 1:
            groups[g] = WidthGroup(widths=widths, within=analysis.group_within[g], unit=unit)
    sequences = {
        s: DepthSequence(blocks=blocks, depths=list(range(len(blocks) + 1))) for s, blocks in analysis.sequences.items()
    }
    return GraphSpace(
        family="graph",
        name=name,
        description=description or f"derived from {model}",
        dataset=dataset,
        num_classes=num_classes,
        channel_divisor=channel_divisor,
        model=model,
        model_kwargs=model_kwargs or {},
        input_shape=analysis.input_shape,
        input_kind=input_kind,
        graph_digest=analysis.digest,
        groups=groups,
        sequences=sequences,
    )


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _select_lock(net: nn.Module) -> threading.RLock:
    """One re-entrant lock per supernet, kept outside it (a lock attribute would not deep-copy or pickle)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(net)
        if lock is None:
            lock = _LOCKS[net] = threading.RLock()
        return lock


@dataclass(frozen=True)
class GraphLayer:
    """One conv/linear/norm of a subnet as it runs: active channels and the fixed spatial shapes."""

    path: str
    kind: str
    c_in: int
    c_out: int
    block: str
    kernel: tuple[int, ...] = ()
    groups: int = 1
    in_spatial: tuple[int, ...] = ()
    out_spatial: tuple[int, ...] = ()
    bias: bool = False
    affine: bool = True
    inner: int = 0
    """For attention: the features of its kept heads (``heads * head_dim``)."""

    @property
    def params(self) -> int:
        if self.kind in ("batchnorm", "layernorm", "groupnorm"):
            return (2 * self.c_out) if self.affine else 0
        if self.kind == "attention":  # q, k, v and the output projection
            return (3 * self.inner * self.c_in + self.inner * self.c_out
                    + ((3 * self.inner + self.c_out) if self.bias else 0))  # fmt: skip
        return self.c_in // self.groups * self.c_out * math.prod(self.kernel) + (self.c_out if self.bias else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1 (norms fold into the preceding layer at inference)."""
        if self.kind in ("batchnorm", "layernorm", "groupnorm"):
            return 0
        if self.kind == "attention":  # projections per token, then scores and the weighted sum (self-attention)
            tokens = math.prod(self.out_spatial)
            return tokens * (3 * self.inner * self.c_in + self.inner * self.c_out) + 2 * tokens * tokens * self.inner
        return self.c_in // self.groups * self.c_out * math.prod(self.kernel) * math.prod(self.out_spatial)


class GraphSupernet(nn.Module):
    """``model`` converted in place: its conv/linear/norm layers become elastic (same parameters), its
    skippable blocks are wrapped. Without a config, it computes exactly what ``model`` computed.
    ``with supernet.select(cfg): supernet(x)`` runs a subnet; :func:`extract` makes it a plain model.
    The supernet the trainer, evaluator, exporter and search read, for a user's model and the built-in
    ones alike."""

    space: GraphSpace
    body: nn.Module

    def __init__(
        self, space: GraphSpace, model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    ):
        super().__init__()
        self.space = space
        x = example_input if example_input is not None else example_inputs(space)
        analysis = analyze_model(model, x, space.channel_divisor)
        if analysis.digest != space.graph_digest:
            raise GraphError(
                f"the model's graph (digest {analysis.digest}) is not the one space '{space.name}' was derived "
                f"from ({space.graph_digest}); derive the space again from this model"
            )
        for g, group in space.groups.items():
            if g not in analysis.group_size:
                raise GraphError(f"space '{space.name}': group '{g}' is not a channel group of the model")
            unit, kind = analysis.unit_channels(g), analysis.group_unit.get(g, "channels")
            if max(group.widths) * unit > analysis.group_size[g] or group.unit != kind:
                raise GraphError(
                    f"space '{space.name}': group '{g}' allows {max(group.widths)} {group.unit}; the model has "
                    f"{analysis.group_size[g] // unit} {kind}"
                )
        for s, seq in space.sequences.items():
            if analysis.sequences.get(s, [])[: len(seq.blocks)] != seq.blocks:
                raise GraphError(f"space '{space.name}': '{s}' is not a sequence of skippable blocks of the model")
        self.analysis = analysis
        self.body = model
        self._convert()
        self.train(model.training)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The body on its inputs: one tensor, or several (token ids and an attention mask)."""
        return self.body(x, *inputs)

    def _checked(self, cfg: SubnetConfig | dict) -> SubnetConfig:
        return self.space.parse_config(cfg)

    def _elastic(self) -> Iterator[tuple[str, ElasticModule]]:
        for name, m in self.body.named_modules():
            if isinstance(m, ElasticModule):
                yield name, m

    def macs(self, cfg: SubnetConfig) -> int:
        """Multiply-accumulates of one forward pass at batch 1, from the config alone."""
        return sum(layer.macs for layer in self.trace(cfg))

    # -- conversion ----------------------------------------------------------------------------------
    def _convert(self) -> None:
        composed = [p for p, m in self.body.named_modules() if p and type(m) in COMPOSED]
        for path in composed:  # torch's encoder modules run their composed path from now on
            self._replace(path, COMPOSED[type(self.body.get_submodule(path))][1](self.body.get_submodule(path)))
        for path in self.analysis.layers:
            self._replace(path, elastic_of(self.body.get_submodule(path)))
        for blocks in self.analysis.sequences.values():
            for path in blocks:
                self._replace(path, Skippable(self.body.get_submodule(path)))

    def _replace(self, path: str, module: nn.Module) -> None:
        module.train(self.body.get_submodule(path).training)  # keeps the model's train/eval mode
        parent, _, name = path.rpartition(".")
        setattr(self.body.get_submodule(parent) if parent else self.body, name, module)

    def _module(self, path: str) -> nn.Module:
        """The (elastic) layer at a path of the original model, looking through Skippable wrappers."""
        m = self.body
        for part in path.split("."):
            m = getattr(m, part)
            if isinstance(m, Skippable):
                m = m.block
        return m

    # -- configs -------------------------------------------------------------------------------------
    def _sel(self, layout: Layout, widths: dict[int, int | None]) -> Sel:
        """The active channels of ``layout`` as a selection: a count, or an index tensor where a segment
        before the last is cut (:func:`~nasprune.graph.analyze.active_parts`)."""
        parts = active_parts(layout, widths)
        if len(parts) == 1 or all(n == seg.features for (_, n), seg in zip(parts, layout, strict=True)):
            return sum(n for _, n in parts) if len(parts) > 1 else parts[0][1]
        key = tuple(parts)
        idx = self._index_cache.get(key)
        if idx is None:
            idx = self._index_cache[key] = torch.cat([torch.arange(o, o + n) for o, n in parts])
        return idx

    def _skipped(self, cfg: SubnetConfig) -> set[str]:
        return self.space.skipped_blocks(cfg.depths)

    @staticmethod
    def _inside(path: str, blocks: set[str]) -> str | None:
        return next((b for b in blocks if path.startswith(b + ".")), None)

    @contextmanager
    def select(self, cfg: SubnetConfig | dict) -> Iterator[GraphSupernet]:
        """Run the subnet ``cfg`` inside the block. Threads selecting on the same supernet take turns
        (the elastic state is the supernet's own); the previous state always comes back."""
        cfg = self._checked(cfg)
        with _select_lock(self), self._selected(cfg):
            yield self

    @contextmanager
    def _selected(self, cfg: SubnetConfig) -> Iterator[GraphSupernet]:
        saved = {name: m.elastic_state() for name, m in self._elastic()}
        try:
            widths = self.analysis.widths(cfg.widths)
            for path, use in self.analysis.layers.items():
                m = self._module(path)
                if use.kind in ("conv1d", "conv2d", "linear"):
                    m.set_elastic_state((self._sel(use.in_layout, widths), self._sel(use.out_layout, widths)))
                elif use.kind == "attention":
                    m.set_elastic_state((self._sel(use.in_layout, widths), self._sel(use.inner_layout, widths),
                                         self._sel(use.out_layout, widths)))  # fmt: skip
                else:
                    m.set_elastic_state((self._sel(use.out_layout, widths),))
            skipped = self._skipped(cfg)
            for blocks in self.analysis.sequences.values():
                for b in blocks:
                    self.body.get_submodule(b).set_elastic_state((b not in skipped,))
            yield self
        finally:
            for name, m in self._elastic():
                m.set_elastic_state(saved[name])

    def trace(self, cfg: SubnetConfig) -> list[GraphLayer]:
        cfg = self._checked(cfg)
        widths = self.analysis.widths(cfg.widths)
        skipped = self._skipped(cfg)
        out = []
        for path, use in self.analysis.layers.items():
            if self._inside(path, skipped):
                continue
            m = self._module(path)
            c_out = active_count(use.out_layout, widths)
            block = self._inside(path, set(b for bs in self.analysis.sequences.values() for b in bs)) or ""
            spatial = {"in_spatial": use.in_spatial, "out_spatial": use.out_spatial}
            if use.kind in ("conv1d", "conv2d", "linear"):
                c_in = c_out if use.depthwise else active_count(use.in_layout, widths)
                kernel = tuple(m.weight.shape[2:]) if use.kind != "linear" else ()
                groups = c_out if isinstance(m, ElasticConv) and m.depthwise else 1
                out.append(
                    GraphLayer(path, use.kind, c_in, c_out, block, kernel, groups, bias=m.bias is not None, **spatial)
                )
            elif use.kind == "attention":
                c_in, inner = active_count(use.in_layout, widths), active_count(use.inner_layout, widths)
                out.append(GraphLayer(path, use.kind, c_in, c_out, block, bias=m.in_proj_bias is not None,
                                      inner=inner, **spatial))  # fmt: skip
            else:
                affine = getattr(m, "weight", None) is not None
                out.append(GraphLayer(path, use.kind, c_out, c_out, block, affine=affine, **spatial))
        return out

    def _fixed_params(self, skipped: set[str]) -> int:
        """Parameters of layers the analysis did not make elastic (frozen ones), in blocks that run."""
        layers = set(self.analysis.layers)
        attention = {p for p, u in self.analysis.layers.items() if u.kind == "attention"}
        total = 0
        for name, p in self._original_parameters():
            owner = name.rpartition(".")[0]
            if owner in layers or owner.rpartition(".")[0] in attention or self._inside(name, skipped):
                continue
            total += p.numel()
        return total

    def _original_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters named by their path in the original model (without the Skippable wrappers)."""
        blocks = [b for bs in self.analysis.sequences.values() for b in bs]
        for name, p in self.body.named_parameters():
            b = next((b for b in blocks if name.startswith(b + ".block.")), None)
            yield (name if b is None else b + name[len(b) + len(".block") :]), p

    def num_params(self, cfg: SubnetConfig) -> int:
        cfg = self._checked(cfg)
        return sum(layer.params for layer in self.trace(cfg)) + self._fixed_params(self._skipped(cfg))

    # -- importance ----------------------------------------------------------------------------------
    @torch.no_grad()
    def reorder_channels(self, scores: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Sort every channel group by descending importance, in place; the network's function is kept.

        ``scores``: per group, one importance per channel (default: the summed L1 norm of the filters
        that write the group). GroupNorm groups move as whole norm groups. Returns the permutations.
        """
        a = self.analysis
        perms = {}
        for g, roots in a.groups.items():
            score = scores[g] if scores is not None and g in scores else self.l1_importance(g)
            block = a.group_block[g]
            if block > 1:
                order = torch.argsort(score.view(-1, block).sum(1), descending=True, stable=True)
                perm = (order[:, None] * block + torch.arange(block)).flatten()
            else:
                perm = torch.argsort(score, descending=True, stable=True)
            self._permute(set(roots), perm)
            perms[g] = perm
        return perms

    def l1_importance(self, group: str) -> torch.Tensor:
        """Summed L1 norm of every filter that writes the group's channels."""
        total = torch.zeros(self.analysis.group_size[group])
        for use, role, _, _ in self._members(group):
            if role == "out" and use.kind in ("conv1d", "conv2d", "linear") and not use.depthwise:
                total += self._module(use.path).weight.detach().abs().flatten(1).sum(1).cpu()
            elif role == "inner":  # a head: its rows of q, k and v
                m = self._module(use.path)
                w = m.in_proj_weight.detach().abs().unflatten(0, (3, m.num_heads, m.head_dim))
                total += w.sum(dim=(0, 2, 3)).cpu()
            elif role == "out" and use.kind == "attention":
                total += self._module(use.path).out_proj.weight.detach().abs().sum(1).cpu()
        return total

    @torch.no_grad()
    def activation_importance(self, batches) -> dict[str, torch.Tensor]:
        """Per group, the mean |activation| of its channels on ``batches`` (e.g. the calibration split):
        the outputs of the norms that normalise the group (or, where none does, of the layers that
        write it), summed over those layers; for attention heads, what each head writes through the
        output projection. A data-driven alternative to :meth:`l1_importance`; pass
        the result to :meth:`reorder_channels`."""
        a = self.analysis
        watch: list[tuple[str, Layout]] = []
        normed = {a.var_root[seg.var] for u in a.layers.values() if u.kind in ("batchnorm", "layernorm", "groupnorm")
                  for seg in u.out_layout}  # fmt: skip
        for use in a.layers.values():
            is_norm = use.kind in ("batchnorm", "layernorm", "groupnorm")
            writes = use.kind in ("conv1d", "conv2d", "linear") and not use.depthwise
            root = a.var_root[use.out_layout[0].var] if len(use.out_layout) == 1 else None
            if is_norm or (writes and root not in normed):
                watch.append((use.path, use.out_layout, use.axis))
        sums = {g: torch.zeros(n, dtype=torch.float64) for g, n in a.group_size.items() if g in a.groups}
        handles = []

        def hook(layout, axis):
            def fn(_module, _inputs, out):
                per = out.detach().abs().movedim(axis, 0).flatten(1).mean(1).double().cpu()
                off = 0
                for seg in layout:
                    g = a.var_group.get(a.var_root[seg.var])
                    if g in sums:
                        sums[g] += per[off : off + seg.features].view(seg.size, seg.repeat).mean(1)
                    off += seg.features

            return fn

        for path, layout, axis in watch:
            handles.append(self._module(path).register_forward_hook(hook(layout, axis)))

        def heads_hook(group):
            def fn(module, args, kwargs, _out):
                per = module.head_activity(*args, **kwargs).double().cpu()
                sums[group][: len(per)] += per

            return fn

        for use in a.layers.values():  # heads: what each writes through the output projection
            group = a.var_group.get(a.var_root[use.inner_layout[0].var]) if use.inner_layout else None
            if group in sums:
                handles.append(self._module(use.path).register_forward_hook(heads_hook(group), with_kwargs=True))
        was = self.training
        self.eval()
        try:
            for batch in batches:
                self(batch[0] if isinstance(batch, tuple | list) else batch)
        finally:
            for h in handles:
                h.remove()
            self.train(was)
        return {g: v.float() for g, v in sums.items()}

    def _members(self, group: str):
        """(layer use, 'in'|'out', feature offset, repeat) for every place the group's channels appear."""
        roots = set(self.analysis.groups[group])
        for use in self.analysis.layers.values():
            for role, layout in (("in", use.in_layout), ("out", use.out_layout), ("inner", use.inner_layout)):
                off = 0
                for seg in layout:
                    if self.analysis.var_root[seg.var] in roots:
                        yield use, role, off, seg.repeat
                    off += seg.features

    def _permute(self, roots: set[int], perm: torch.Tensor) -> None:
        a = self.analysis
        for use in a.layers.values():
            m = self._module(use.path)
            if use.kind == "attention":
                self._permute_attention(m, use, roots, perm)
                continue
            weighted = use.kind in ("conv1d", "conv2d", "linear")
            for role, layout in (("out", use.out_layout), ("in", use.in_layout)):
                if role == "in" and (not weighted or use.depthwise):
                    continue  # norms and depthwise convs: their output layout is their input layout
                off = 0
                for seg in layout:
                    if a.var_root[seg.var] in roots:
                        idx = (perm[:, None] * seg.repeat + torch.arange(seg.repeat)).flatten() + off
                        span = slice(off, off + seg.features)
                        if role == "out":
                            tensors = [m.weight, getattr(m, "bias", None)]
                            tensors += [getattr(m, "running_mean", None), getattr(m, "running_var", None)]
                            for t in tensors:
                                if t is not None:
                                    t[span] = t[idx]
                        else:
                            m.weight[:, span] = m.weight[:, idx]
                    off += seg.features


    def _permute_attention(self, m: nn.Module, use, roots: set[int], perm: torch.Tensor) -> None:
        """Heads move as whole blocks of rows of q, k, v (and columns of the output projection); the
        input and output channels as columns of q, k, v and rows of the output projection."""
        root = self.analysis.var_root
        if root[use.inner_layout[0].var] in roots:
            d = m.head_dim
            rows = (perm[:, None] * d + torch.arange(d)).flatten()
            w = m.in_proj_weight.unflatten(0, (3, -1))
            w.copy_(w[:, rows])
            if m.in_proj_bias is not None:
                b = m.in_proj_bias.unflatten(0, (3, -1))
                b.copy_(b[:, rows])
            m.out_proj.weight.copy_(m.out_proj.weight[:, rows])
        for layout, tensors, dim in ((use.in_layout, [m.in_proj_weight], 1),
                                     (use.out_layout, [m.out_proj.weight, m.out_proj.bias], 0)):  # fmt: skip
            off = 0
            for seg in layout:
                if root[seg.var] in roots:
                    idx = (perm[:, None] * seg.repeat + torch.arange(seg.repeat)).flatten() + off
                    for t in tensors:
                        if t is not None:
                            t.narrow(dim, off, seg.features).copy_(t.index_select(dim, idx))
                off += seg.features


def extract(supernet: GraphSupernet, cfg: SubnetConfig | dict, cache: SliceCache | None = None) -> nn.Module:
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


def fixed_groups(analysis: Analysis, space: GraphSpace) -> dict[str, str]:
    """Channel groups the space leaves at full width and why (frozen by the analysis, or one choice)."""
    out = dict(analysis.frozen_groups)
    for g, size in analysis.group_size.items():
        if g not in space.groups:
            unit = analysis.group_unit.get(g, "channels")
            out[g] = f"a single width choice ({size} {unit}; the divisor is {space.channel_divisor})"
    return out


__all__ = ["GraphLayer", "GraphSupernet", "extract", "fixed_groups", "space_from_analysis", "width_choices"]
