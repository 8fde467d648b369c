"""Graph analysis: which channels of a model must be pruned together, which blocks can be skipped,
and what cannot be analysed (frozen at full width, each with its reason).

The model is traced once with ``torch.fx`` (see docs/graph.md for why fx and not torch.export) and
its shapes propagated with one example input. Every tensor's channel dimension (dim 1) is described
by a *layout*: a tuple of :class:`Segment`, each a run of channels of one *channel variable*. A
conv/linear output starts a new variable; norms, activations, pooling and dropout pass the layout
through; a residual add or a squeeze-excite multiply *unifies* the variables of its operands; a
concatenation concatenates layouts (index offsets); a depthwise conv passes its input layout to its
output (its input and output channels are the same channels); ``flatten -> linear`` repeats each
channel over its spatial positions. After the walk, every set of unified variables is one *channel
group*: the channels a subnet keeps the leading ``w`` of.

Anything the walk does not know (a module or function outside its tables, a grouped conv that is
not depthwise, a reshape to a fixed size, a transpose, a module whose forward fx cannot trace because
of data-dependent control flow or a custom autograd function) *freezes* every channel variable that
flows into or out of it, with the reason. An unknown op is never assumed elementwise.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from nasprune.elastic.attention import COMPOSED, supported
from nasprune.errors import GraphError
from nasprune.graph.exported import export_graph

# -- what the walk knows ------------------------------------------------------------------------------

_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Upsample,
)  # fmt: skip
"""Leaf modules that act per channel and accept any channel count (PReLU only with one parameter)."""

IDENTITY_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
"""Modules that return their input at inference: no kernel, and a skip through one is the skip itself."""

_PASS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d,
    torch.relu, torch.sigmoid, torch.tanh, torch.nn.functional.relu_,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate,
    torch.clone, torch.clamp, torch.abs, torch.exp, operator.neg, operator.pos, torch.neg,
}  # fmt: skip
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clone", "contiguous",
    "abs", "exp", "neg", "float", "detach",
}  # fmt: skip
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_ADD_TARGETS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SHAPE_METHODS = {"size", "dim"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_CONCAT_FUNCTIONS = {torch.cat, torch.concat}
_PERMUTE_METHODS = {"permute", "transpose"}
_PERMUTE_FUNCTIONS = {torch.permute, torch.transpose}

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
WEIGHTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


# -- layouts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """``size`` channels of channel variable ``var``; each spans ``repeat`` consecutive features
    (1, except after a flatten, where a channel becomes its H*W positions)."""

    var: int
    size: int
    repeat: int = 1

    @property
    def features(self) -> int:
        return self.size * self.repeat


Layout = tuple[Segment, ...]


def active_parts(layout: Layout, widths: Mapping[int, int | None]) -> list[tuple[int, int]]:
    """``(offset, features)`` of each segment's active channels when the channel variables have
    ``widths`` (a variable missing or None: full size). The one shape routine: the supernet's
    selections, its parameter and MAC counts, and the latency units' keys are all read from it."""
    parts, offset = [], 0
    for seg in layout:
        w = widths.get(seg.var)
        parts.append((offset, seg.features if w is None else w * seg.repeat))
        offset += seg.features
    return parts


def active_count(layout: Layout, widths: Mapping[int, int | None]) -> int:
    """How many features of ``layout`` are active at ``widths`` (:func:`active_parts`, summed)."""
    return sum(n for _, n in active_parts(layout, widths))


class _Vars:
    """Union-find over channel variables; a root knows its size and, if frozen, why."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.block: dict[int, int] = {}  # root -> channels per GroupNorm group (widths must be multiples)

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.block:
            self.block[ra] = math.lcm(self.block.get(ra, 1), self.block.pop(rb))

    def freeze(self, v: int, reason: str) -> None:
        self.frozen.setdefault(self.find(v), reason)


# -- what the analysis returns ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerUse:
    """How one module takes part in the graph: the layouts of its input and output channels."""

    path: str
    kind: str  # conv1d | conv2d | linear | batchnorm | layernorm | groupnorm | attention
    in_layout: Layout
    out_layout: Layout
    depthwise: bool = False
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    axis: int = 1
    """The channel dimension of its input and output (1 for convs; the last for a linear or norm over
    tokens, e.g. ``(batch, sequence, features)``)."""
    inner_layout: Layout = ()
    """For attention: its heads, one channel variable with ``head_dim`` features per head."""

    @property
    def in_spatial(self) -> tuple[int, ...]:
        """The input's dimensions other than the batch and the channels (positions, tokens)."""
        return tuple(self.in_shape[1 : self.axis]) + tuple(self.in_shape[self.axis + 1 :])

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return tuple(self.out_shape[1 : self.axis]) + tuple(self.out_shape[self.axis + 1 :])


@dataclass(frozen=True)
class Frozen:
    """Something the analysis could not prune through: the node, what it is, and why."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class Block:
    """A residual block whose input and output shapes match: the network still runs without it."""

    path: str
    input_node: str
    output_node: str


@dataclass
class Analysis:
    """The result of :func:`analyze_model`."""

    layers: dict[str, LayerUse]
    groups: dict[str, list[int]]
    """group name -> the channel-variable roots it covers (one root; a list for future merges)."""
    group_size: dict[str, int]
    group_block: dict[str, int]
    group_within: dict[str, str | None]
    frozen: list[Frozen]
    frozen_groups: dict[str, str]
    """Channel sets that stay at full width: first producer (or node) -> reason."""
    sequences: dict[str, list[str]]
    """depth-sequence name -> the block paths in it, in order."""
    digest: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    var_root: dict[int, int] = field(default_factory=dict)
    var_group: dict[int, str] = field(default_factory=dict)
    node_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    node_layouts: dict[str, Layout | None] = field(default_factory=dict)
    graph: fx.GraphModule | None = None
    """The traced graph (its modules are the model's, as they were when analysed)."""
    group_unit: dict[str, str] = field(default_factory=dict)
    """group name -> what one unit of its width is: ``heads`` for attention heads (absent: channels)."""
    node_axes: dict[str, int] = field(default_factory=dict)
    """node -> its channel dimension (for nodes with a channel layout)."""

    def widths(self, chosen: dict[str, int]) -> dict[int, int | None]:
        """Active channels per channel variable for a config's ``widths`` (None: full size, not chosen)."""
        out = {}
        for var, root in self.var_root.items():
            g = self.var_group.get(root)
            w = chosen.get(g)
            out[var] = None if w is None else w * self.unit_channels(g)
        return out

    def unit_channels(self, group: str | None) -> int:
        """Channels per unit of a group's width: a head's ``head_dim`` where the heads are blocks of a
        projection's channels (``view(B, S, -1, head_dim)``), else 1."""
        return self.group_block.get(group, 1) if self.group_unit.get(group) == "heads" else 1

    def group_of(self, var: int) -> str | None:
        return self.var_group.get(self.var_root[var])


_FUNCTION_APPLY = torch.autograd.Function.apply.__func__.__code__


class _Tracer(fx.Tracer):
    """fx tracer that turns a submodule it cannot trace into a leaf, recording why, and marks the nodes
    fx records from inside a custom ``torch.autograd.Function`` (fx traces its forward and loses its
    backward, so the analysis must not treat those ops as ordinary ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.untraceable: dict[str, str] = {}

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is _FUNCTION_APPLY:
                node.meta["autograd_function"] = getattr(frame.f_locals.get("cls"), "__name__", "?")
                break
            frame = frame.f_back
        return node

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in COMPOSED and qualname not in self.untraceable:
            return False
        return qualname in self.untraceable or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        if type(m) in COMPOSED:  # torch's encoder modules: their composed path, not the fused kernel
            forward = functools.partial(COMPOSED[type(m)][0], m)
        if qualname in self.untraceable or self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        mark = len(self.graph.nodes)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # data-dependent control flow, custom autograd functions, ...
            for node in reversed(list(self.graph.nodes)[mark:]):
                if not node.users:
                    self.graph.erase_node(node)
            self.untraceable[qualname] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            return self.create_proxy("call_module", qualname, args, kwargs)


def trace_model(
    model: nn.Module, inputs: tuple[torch.Tensor, ...] | None = None
) -> tuple[fx.GraphModule, dict[str, str]]:
    """A graph of ``model`` (its modules are not changed) and the submodules left untraced.

    ``torch.fx`` first. Where fx cannot trace the forward itself or has to leave a submodule opaque
    (data-dependent control flow, Hugging Face's mask code), and ``inputs`` are given, the model is
    exported with ``torch.export`` instead (:mod:`nasprune.graph.exported`), which traces with the
    example inputs' values; if that fails too, fx's graph (or its error) stands."""
    tracer = _Tracer()
    try:
        gm, error = fx.GraphModule(model, tracer.trace(model)), None
    except Exception as e:
        gm, error = None, e
    if (error is not None or tracer.untraceable) and inputs is not None:
        was_training = model.training
        model.eval()
        try:
            return export_graph(model, inputs), {}
        except Exception:  # fx's result says what cannot be traced
            pass
        finally:
            model.train(was_training)
    if error is not None:
        raise GraphError(
            f"torch.fx cannot trace {type(model).__name__}.forward itself ({type(error).__name__}: {error}); "
            "data-dependent control flow must live inside submodules, which are then frozen"
        ) from None
    return gm, tracer.untraceable


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _floating(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "dtype", torch.float32).is_floating_point


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', repr(t))}".lstrip(".")


class _Walker:
    def __init__(self, gm: fx.GraphModule, untraceable: dict[str, str]):
        self.gm = gm
        self.untraceable = untraceable
        self.vars = _Vars()
        self.layout: dict[str, Layout | None] = {}
        self.layers: dict[str, LayerUse] = {}
        self.frozen: list[Frozen] = []
        self.modules = dict(gm.named_modules())
        self.calls: dict[str, int] = {}
        self.owner: dict[int, str] = {}  # variable -> the module or node that writes it
        self.axis: dict[str, int] = {}  # node -> its channel dimension (1 unless set)
        self.batch: dict[str, int] = {}  # node -> its batch dimension (0 unless a permute moved it)
        self.parts: dict[str, dict[int, tuple[Layout, int]]] = {}  # tuple-valued node -> element layouts
        self.fixed: dict[str, str] = {}  # node computed from the model's own tensors (get_attr) only
        self.head_vars: set[int] = set()
        self.split: dict[str, tuple[int, int]] = {}  # node -> (heads dim, head_dim dim) of split channels
        self._axis_set: set[str] = set()
        self.split_roots: set[int] = set()  # channel variables split into heads

    # layouts
    def new(self, size: int) -> Layout:
        return (Segment(self.vars.new(size), size),)

    def freeze(self, node: fx.Node, op: str, reason: str, layouts: Iterable[Layout | None]) -> None:
        self.frozen.append(Frozen(node.name, op, reason))
        for lay in layouts:
            for seg in lay or ():
                self.vars.freeze(seg.var, f"{reason} (at {node.name})")

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if self.layout.get(a.name) is not None]

    def unify(self, node: fx.Node, a: Layout, b: Layout) -> Layout:
        """Make two layouts of the same channels one (residual add, SE multiply)."""
        if a == b:
            return a
        if [s.features for s in a] == [s.features for s in b] and all(
            x.repeat == y.repeat for x, y in zip(a, b, strict=True)
        ):
            for x, y in zip(a, b, strict=True):
                self.vars.union(x.var, y.var)
            return a
        self.freeze(node, _target_name(node), "operands whose channel layouts differ", [a, b])
        return a

    def ax(self, node: fx.Node) -> int:
        return self.axis.get(node.name, 1)

    def split_op(self, node: fx.Node, shape, ins: list[fx.Node]) -> tuple[bool, Layout | None]:
        """Ops on channels split into heads (``view(B, S, -1, d)``): reshapes and permutes move the two
        dims, scaled_dot_product_attention joins q, k and v, element-wise ops keep them; anything else
        freezes them. Returns (handled, layout)."""
        t, is_method = node.target, node.op == "call_method"
        name = _target_name(node)
        split_in = [i for i in ins if i.name in self.split]
        if t is F.scaled_dot_product_attention:
            qkv = [node.args[i] if i < len(node.args) else node.kwargs.get(k)
                   for i, k in enumerate(("query", "key", "value"))]  # fmt: skip
            lays = [self.layout.get(a.name) if isinstance(a, fx.Node) else None for a in qkv]
            spl = [self.split.get(a.name) if isinstance(a, fx.Node) else None for a in qkv]
            rank = len(shape)
            if any(x is None for x in lays) or any(sp != (rank - 3, rank - 1) for sp in spl):
                self.freeze(node, name, "scaled_dot_product_attention over tensors not split into heads (batch, "
                            "heads, tokens, head_dim)", lays)  # fmt: skip
                return True, self.frozen_out(node, shape, None, None)
            lay = lays[0]
            for other in lays[1:]:
                lay = self.unify(node, lay, other)
            self.split[node.name] = spl[2]
            self.axis[node.name] = spl[2][0]
            self._axis_set.add(node.name)
            return True, lay
        if not split_in:
            if (is_method and t in ("view", "reshape")) or t is torch.reshape:
                return self.split_reshape(node, shape)
            return False, None
        src = split_in[0]
        lay = self.layout[src.name]
        heads, inner = self.split[src.name]
        if (is_method and t in ("view", "reshape")) or t is torch.reshape:
            in_shape = _shape(src)
            size_args = list(node.args[1:])
            if len(size_args) == 1 and isinstance(size_args[0], list | tuple):
                size_args = list(size_args[0])
            merged = (*in_shape[:heads], in_shape[heads] * in_shape[inner], *in_shape[inner + 1 :])
            if tuple(shape) == tuple(in_shape) and len(size_args) == len(shape):  # a reshape to its own shape
                if isinstance(size_args[heads], int) and size_args[heads] != -1:
                    self.freeze(node, name, f"reshape to the fixed number of heads {size_args[heads]}", [lay])
                self.split[node.name] = (heads, inner)
                self.axis[node.name] = heads
                self._axis_set.add(node.name)
                return True, lay
            if inner == heads + 1 and tuple(shape) == merged and len(size_args) == len(shape):
                if isinstance(size_args[heads], int) and size_args[heads] != -1:
                    self.freeze(node, name, f"reshape to the fixed channel count {size_args[heads]}", [lay])
                self.axis[node.name] = heads
                self._axis_set.add(node.name)
                return True, lay  # the heads merge back into channels
        elif (t in _PERMUTE_FUNCTIONS) or (is_method and t in _PERMUTE_METHODS):
            rank = len(shape)
            args = list(node.args[1:]) or list(node.kwargs.values())
            if len(args) == 1 and isinstance(args[0], list | tuple):
                args = list(args[0])
            if t in ("transpose", torch.transpose):
                d0, d1 = (int(a) % rank for a in args[:2])
                perm = list(range(rank))
                perm[d0], perm[d1] = d1, d0
            else:
                perm = [int(a) % rank for a in args]
            batch = self.batch.get(src.name, 0)
            self.split[node.name] = (perm.index(heads), perm.index(inner))
            self.axis[node.name] = perm.index(heads)
            self._axis_set.add(node.name)
            self.batch[node.name] = perm.index(batch)
            return True, lay
        elif (is_method and t in _PASS_METHODS) or t in _PASS_FUNCTIONS:
            if len(ins) == 1:
                return False, None  # per-channel: the split is passed on with the layout
        elif (
            ((t in _BINARY_FUNCTIONS) or (is_method and t in _BINARY_METHODS))
            and len(ins) == 1
            and not any(isinstance(a, fx.Node) and a.name in self.fixed for a in node.args[:2])
        ):
            return False, None  # a scale
        self.freeze(node, name, f"{name} over channels split into heads", [self.layout[i.name] for i in ins])
        return True, self.frozen_out(node, shape, None, None)

    def split_reshape(self, node: fx.Node, shape) -> tuple[bool, Layout | None]:
        """``x.view(B, S, -1, d)``: the channels (last dim) of one projection become heads of ``d``."""
        first = node.args[0]
        lay = self.layout.get(first.name) if isinstance(first, fx.Node) else None
        in_shape = _shape(first) if isinstance(first, fx.Node) else None
        if lay is None or in_shape is None:
            return False, None
        k = self.ax(first)
        size_args = list(node.args[1:])
        if len(size_args) == 1 and isinstance(size_args[0], list | tuple):
            size_args = list(size_args[0])
        if not (k == len(in_shape) - 1 and len(shape) == len(in_shape) + 1 and tuple(shape[:k]) == tuple(in_shape[:k])
                and shape[k] * shape[k + 1] == in_shape[k] and shape[k] > 1 and len(size_args) == len(shape)
                and len(lay) == 1 and lay[0].repeat == 1 and isinstance(size_args[k + 1], int)):  # fmt: skip
            return False, None
        d = shape[k + 1]
        root = self.vars.find(lay[0].var)
        self.vars.block[root] = math.lcm(self.vars.block.get(root, 1), d)
        self.split_roots.add(root)
        if isinstance(size_args[k], int) and size_args[k] != -1:
            self.freeze(node, _target_name(node), f"reshape to the fixed number of heads {size_args[k]}", [lay])
        self.split[node.name] = (k, k + 1)
        self.axis[node.name] = k
        self._axis_set.add(node.name)
        return True, lay

    def ax_of(self, name: str) -> int:
        return self.axis.get(name, 1)

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            first = len(self.vars.parent)
            lay = self.layout[node.name] = self.visit(node)
            if lay is not None and node.name not in self.axis:  # passed on: the channel dim of its source
                src = next((i for i in node.all_input_nodes if self.layout.get(i.name) == lay), None)
                if src is not None:
                    self.axis[node.name] = self.ax(src)
            if lay is not None and node.name not in self.split and node.name not in self._axis_set:
                src = next((i for i in node.all_input_nodes if i.name in self.split and self.layout.get(i.name) == lay
                            and _shape(i) == _shape(node)), None)  # fmt: skip
                if src is not None:
                    self.split[node.name] = self.split[src.name]
            if lay is not None and node.name not in self.batch:
                src = next((i for i in node.all_input_nodes if self.layout.get(i.name) is not None), None)
                if src is not None and self.batch.get(src.name, 0):
                    self.batch[node.name] = self.batch[src.name]
            for var in range(first, len(self.vars.parent)):
                self.owner[var] = str(node.target) if node.op == "call_module" else node.name

    def frozen_out(self, node: fx.Node, shape, reason: str | None, like: fx.Node | None = None) -> Layout | None:
        """A new, frozen channel variable for the output of an op the walk does not know; its channel dim
        is that of ``like`` (an input of the same rank), else dim 1."""
        axis = self.ax(like) if like is not None and _shape(like) is not None and len(_shape(like)) == len(shape) else 1
        if len(shape) <= axis:
            return None
        out = self.new(shape[axis])
        if reason is not None:
            self.vars.freeze(out[0].var, reason)
        self.axis[node.name] = axis
        return out

    def visit(self, node: fx.Node) -> Layout | None:
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is None or len(shape) < 2 or not _floating(node):  # token ids, masks: no channels
                return None
            lay = self.new(shape[1])
            self.vars.freeze(lay[0].var, "network input")
            return lay
        if node.op == "get_attr":
            self.fixed[node.name] = str(node.target)
            return None
        if node.op == "output":
            for a in node.all_input_nodes:
                for seg in self.layout.get(a.name) or ():
                    self.vars.freeze(seg.var, "network output")
            return None
        ins = self.inputs(node)
        if node.op == "call_module" and type(self.modules[str(node.target)]) is nn.MultiheadAttention:
            return self.attention(node)
        if node.op == "call_function" and node.target is operator.getitem and node.args[0].name in self.parts:
            part = self.parts[node.args[0].name].get(node.args[1])
            if part is None:
                return None
            self.axis[node.name] = part[1]
            return part[0]
        if not ins and any(i.name in self.fixed for i in node.all_input_nodes):
            self.fixed[node.name] = next(self.fixed[i.name] for i in node.all_input_nodes if i.name in self.fixed)
            return None
        if "autograd_function" in node.meta:
            fn = node.meta["autograd_function"]
            self.freeze(node, fn, f"inside custom autograd function {fn} (its backward is not traced)",
                        [self.layout[i.name] for i in ins])  # fmt: skip
            if shape is not None and len(shape) >= 2:
                out = self.new(shape[1])
                self.vars.freeze(out[0].var, f"output of custom autograd function {fn}")
                return out
            return None
        if not ins and shape is not None and not _floating(node):
            return None  # computed from token ids or masks (integers, booleans) alone: no channels
        if shape is None:  # a non-tensor value: sizes, tuples, ...
            if node.op == "call_method" and node.target in _SHAPE_METHODS:
                return None
            if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "dtype", "device"):
                return None
            if ins:
                lays = [self.layout[i.name] for i in ins]
                self.freeze(node, _target_name(node), "returns something other than a tensor", lays)
            return None
        if node.op == "call_module":
            return self.module(node, shape, ins)
        if node.op in ("call_function", "call_method"):
            return self.function(node, shape, ins)
        return None

    def module(self, node: fx.Node, shape: tuple[int, ...], ins: list[fx.Node]) -> Layout | None:
        path = str(node.target)
        m = self.modules[path]
        self.calls[path] = self.calls.get(path, 0) + 1
        x = ins[0] if ins else None
        lay = self.layout[x.name] if x is not None else None
        in_shape = _shape(x) if x is not None else ()
        axis = self.ax(x) if x is not None else 1
        last = len(in_shape) - 1
        kind = type(m).__name__
        if x is not None and x.name in self.split and type(m) not in _PASS_MODULES:
            self.freeze(node, kind, f"{kind} over channels split into heads", [self.layout[i.name] for i in ins])
            return self.frozen_out(node, shape, f"output of {path} ({kind} over channels split into heads)", None)
        if path in self.untraceable:
            self.freeze(node, kind, f"fx cannot trace it: {self.untraceable[path]}", [self.layout[i.name] for i in ins])
            return self.frozen_out(node, shape, None, x)  # a variable of its own, which no layer writes
        if self.calls[path] > 1 and isinstance(m, WEIGHTED_TYPES + NORM_TYPES):
            self.freeze(node, kind, "module called more than once (shared weights)", [lay])
            return self.frozen_out(node, shape, "output of a module called more than once", x)
        if x is not None and self.batch.get(x.name, 0) and isinstance(m, WEIGHTED_TYPES + NORM_TYPES):
            reason = f"{kind} over a tensor whose batch is dim {self.batch[x.name]} (sequence-first)"
            self.freeze(node, kind, reason, [lay])
            return self.frozen_out(node, shape, f"output of {path}: {reason}", x)
        if lay is not None and axis != 1 and isinstance(m, nn.Conv1d | nn.Conv2d | nn.BatchNorm1d | nn.BatchNorm2d
                                                         | nn.GroupNorm):  # fmt: skip
            reason = f"{kind} over dim 1 of a tensor whose channels are dim {axis}"
            self.freeze(node, kind, reason, [lay])
            return self.frozen_out(node, shape, f"output of {path}: {reason}", x)
        if type(m) is nn.Embedding:  # token ids in, a new tensor whose channels are its last dim
            out = self.new(m.embedding_dim)
            self.vars.freeze(out[0].var, f"written by the embedding {path} (an embedding's width is not pruned)")
            self.axis[node.name] = len(shape) - 1
            return out
        if isinstance(m, nn.Conv1d | nn.Conv2d) and type(m) in (nn.Conv1d, nn.Conv2d):
            return self.conv(node, m, path, lay, in_shape, shape)
        if type(m) is nn.Linear:
            if lay is not None and axis != last and all(self.vars.find(g.var) in self.vars.frozen for g in lay):
                # it reads a fixed tensor (the network's input, say) whole, along its last dim
                reason = self.vars.frozen[self.vars.find(lay[0].var)]
                lay, axis = self.new(in_shape[-1]), last
                self.vars.freeze(lay[0].var, reason.split(" (at ")[0])
            if lay is None or axis != last:
                reason = "Linear over a dimension other than the channels"
                self.freeze(node, kind, reason, [lay])
                out = self.new(shape[-1])
                self.vars.freeze(out[0].var, reason)
                self.axis[node.name] = len(shape) - 1
                return out
            out = self.new(m.out_features)
            self.axis[node.name] = last
            self.layers[path] = LayerUse(path, "linear", lay, out, in_shape=in_shape, out_shape=shape, axis=last)
            return out
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) and lay is not None and len(in_shape) in (2, 3, 4):
            self.layers[path] = LayerUse(path, "batchnorm", lay, lay, in_shape=in_shape, out_shape=shape)
            return lay
        if type(m) is nn.LayerNorm and lay is not None:
            if axis == last and tuple(m.normalized_shape) == (in_shape[-1],):
                self.layers[path] = LayerUse(path, "layernorm", lay, lay, in_shape=in_shape, out_shape=shape, axis=last)
                return lay
            reason = f"LayerNorm over {tuple(m.normalized_shape)} of a rank-{len(in_shape)} input"
            self.freeze(node, kind, reason, [lay])
            return lay
        if type(m) is nn.GroupNorm and lay is not None:
            if len(lay) == 1:
                per = m.num_channels // m.num_groups
                root = self.vars.find(lay[0].var)
                self.vars.block[root] = math.lcm(self.vars.block.get(root, 1), per)
                self.layers[path] = LayerUse(path, "groupnorm", lay, lay, in_shape=in_shape, out_shape=shape)
                return lay
            self.freeze(node, kind, "GroupNorm over concatenated channels", [lay])
            return lay
        if type(m) in _PASS_MODULES:
            if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                self.freeze(node, kind, "PReLU with one parameter per channel", [lay])
                return lay
            return lay
        if type(m) is nn.Flatten:
            return self.flatten(node, lay, in_shape, shape, m.start_dim, axis)
        lays = [self.layout[i.name] for i in ins]
        self.freeze(node, kind, f"unsupported module type {type(m).__module__}.{kind}", lays)
        return self.frozen_out(node, shape, f"output of unsupported module {path} ({kind})", x)

    def attention(self, node: fx.Node) -> None:
        """``nn.MultiheadAttention``: its input channels are the columns of q/k/v (query, key and value
        read the same columns, so their layouts join), its heads a new variable (``head_dim`` features
        per head: rows of q, k and v, columns of the output projection), its output a new variable."""
        path = str(node.target)
        m = self.modules[path]
        self.calls[path] = self.calls.get(path, 0) + 1
        names = ("query", "key", "value")
        args = [node.args[i] if i < len(node.args) else node.kwargs.get(n) for i, n in enumerate(names)]
        lays = [self.layout.get(a.name) if isinstance(a, fx.Node) else None for a in args]
        metas = node.meta.get("tensor_meta")
        out_shape = tuple(metas[0].shape) if isinstance(metas, tuple | list) and metas else None
        in_shape = _shape(args[0]) if isinstance(args[0], fx.Node) else None
        reason = supported(m)
        if reason is None and self.calls[path] > 1:
            reason = "module called more than once (shared weights)"
        if reason is None and (in_shape is None or out_shape is None or any(x is None for x in lays)):
            reason = "MultiheadAttention over inputs without a channel layout"
        if reason is None and any(self.ax(a) != len(_shape(a)) - 1 for a in args):
            reason = "MultiheadAttention over a dimension other than the channels"
        if reason is None and (not m.batch_first or any(self.batch.get(a.name, 0) for a in args)):
            reason = "MultiheadAttention over sequence-first tensors (batch_first=False)"
        if reason is not None:
            self.freeze(node, "MultiheadAttention", reason, lays)
            if out_shape is not None:
                out = self.new(out_shape[-1])
                self.vars.freeze(out[0].var, f"output of {path}: {reason}")
                self.parts[node.name] = {0: (out, len(out_shape) - 1)}
            return None
        lay = lays[0]
        for other in lays[1:]:
            lay = self.unify(node, lay, other)
        heads = self.vars.new(m.num_heads)
        self.head_vars.add(heads)
        inner = (Segment(heads, m.num_heads, m.head_dim),)
        out = self.new(m.embed_dim)
        last = len(in_shape) - 1
        self.layers[path] = LayerUse(path, "attention", lay, out, in_shape=in_shape, out_shape=out_shape, axis=last,
                                     inner_layout=inner)  # fmt: skip
        self.parts[node.name] = {0: (out, last)}
        return None

    def conv(self, node, m, path, lay, in_shape, shape) -> Layout | None:
        dim = 1 if isinstance(m, nn.Conv1d) else 2
        kind = f"conv{dim}d"
        if lay is None:
            return self.new(m.out_channels)
        if m.padding_mode != "zeros":
            self.freeze(node, type(m).__name__, f"padding_mode={m.padding_mode!r} (only zeros is supported)", [lay])
            out = self.new(m.out_channels)
            self.vars.freeze(out[0].var, f"output of {path} (padding_mode={m.padding_mode!r})")
            return out
        if m.groups == 1:
            out = self.new(m.out_channels)
            self.layers[path] = LayerUse(path, kind, lay, out, in_shape=in_shape, out_shape=shape)
            return out
        if m.groups == m.in_channels == m.out_channels and len(lay) == 1:
            self.layers[path] = LayerUse(path, kind, lay, lay, depthwise=True, in_shape=in_shape, out_shape=shape)
            return lay
        reason = f"grouped convolution (groups={m.groups}, {m.in_channels}->{m.out_channels}) that is not depthwise"
        self.freeze(node, type(m).__name__, reason, [lay])
        out = self.new(m.out_channels)
        self.vars.freeze(out[0].var, f"output of {path}: {reason}")
        return out

    def flatten(self, node, lay, in_shape, shape, start_dim: int, axis: int = 1) -> Layout | None:
        if lay is None:
            return None
        rank = len(in_shape)
        start = start_dim % rank if rank else 0
        if start > axis:
            return lay
        if axis != 1:
            reason = f"flatten from dim {start_dim} merges the channels (dim {axis})"
            self.freeze(node, _target_name(node), reason, [lay])
            return None
        if start == 1 and len(shape) == 2:
            spatial = math.prod(in_shape[2:])
            return tuple(Segment(s.var, s.size, s.repeat * spatial) for s in lay)
        self.freeze(node, _target_name(node), f"flatten from dim {start_dim} merges the batch and channel dims", [lay])
        return None

    def function(self, node: fx.Node, shape, ins: list[fx.Node]) -> Layout | None:
        t = node.target
        is_method = node.op == "call_method"
        name = _target_name(node)
        lays = [self.layout[i.name] for i in ins]
        first = node.args[0] if node.args else None
        lay0 = self.layout.get(first.name) if isinstance(first, fx.Node) else None
        axis0 = self.ax(first) if lay0 is not None else 1
        handled, out = self.split_op(node, shape, ins)
        if handled:
            return out
        if (t in _PASS_FUNCTIONS) or (is_method and t in _PASS_METHODS):
            if len(ins) > 1:
                self.freeze(node, name, "per-channel function with more than one tensor input", lays)
            return lay0
        if (t in _BINARY_FUNCTIONS) or (is_method and t in _BINARY_METHODS):
            return self.binary(node, name, lay0, ins)
        if t in _CONCAT_FUNCTIONS:
            parts = node.args[0]
            like = ins[-1] if ins else None
            if not isinstance(parts, list | tuple):  # a tuple another op computed (a split's parts, reordered)
                self.freeze(node, name, "concatenation of a computed tuple of tensors", lays)
                return self.frozen_out(node, shape, None, like)
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            layouts = [self.layout.get(p.name) if isinstance(p, fx.Node) else None for p in parts]
            if any(x is None for x in layouts):
                self.freeze(node, name, "concatenation of tensors without a channel dimension", layouts)
                return self.frozen_out(node, shape, None, like)
            axes = {self.ax(p) for p in parts}
            if len(axes) > 1:
                self.freeze(node, name, "concatenation of tensors whose channels are different dims", layouts)
                return self.frozen_out(node, shape, None, like)
            if dim % len(shape) == axes.pop():
                return tuple(s for x in layouts for s in x)
            out = layouts[0]
            for other in layouts[1:]:
                out = self.unify(node, out, other)
            return out
        if (t is torch.flatten) or (is_method and t == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self.flatten(node, lay0, _shape(first), shape, start, axis0)
        if (is_method and t in ("view", "reshape")) or t is torch.reshape:
            return self.reshape(node, lay0, _shape(first), shape, axis0)
        if (t in _PERMUTE_FUNCTIONS) or (is_method and t in _PERMUTE_METHODS):
            return self.permute(node, name, lay0, _shape(first), axis0)
        if (t in _REDUCE_FUNCTIONS) or (is_method and t in _REDUCE_METHODS):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            in_shape = _shape(first)
            if dims is None or in_shape is None:
                self.freeze(node, name, "reduction over every dimension", lays)
                return None
            dims = {d % len(in_shape) for d in (dims if isinstance(dims, list | tuple) else [dims])}
            if axis0 in dims or 0 in dims:
                return None  # reads any number of channels; its output has none
            keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            self.axis[node.name] = axis0 if keep else axis0 - sum(d < axis0 for d in dims)
            return lay0
        if t is operator.getitem and isinstance(first, fx.Node) and _shape(first) is not None:
            kept = self.index(node, lay0, axis0)
            if kept is not None:
                return kept
            self.freeze(node, name, "indexing into a tensor", lays)
            return self.frozen_out(node, shape, None, first)
        self.freeze(node, name, f"unsupported {'method' if is_method else 'function'} {name}", lays)
        return self.frozen_out(node, shape, f"output of unsupported op {name}", ins[0] if ins else None)

    def binary(self, node: fx.Node, name: str, lay0: Layout | None, ins: list[fx.Node]) -> Layout | None:
        """An element-wise op of two tensors: operands with the same channels join (a residual add, a
        squeeze-excite multiply); a tensor of the model's own (a parameter) that has more than one entry
        along the channels fixes them."""
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        with_channels = [(self.layout[a.name], _shape(a), self.ax(a)) for a in operands if self.layout.get(a.name)]
        with_channels = [(x, s, k) for x, s, k in with_channels if len(s) > k and s[k] > 1]
        for a in operands:
            f = _shape(a)
            if a.name not in self.fixed or f is None:
                continue
            for lay, s, k in with_channels:
                i = len(f) - (len(s) - k)  # the fixed tensor's dim that meets the channels (broadcast)
                if i >= 0 and f[i] > 1:
                    self.freeze(node, name, f"used with the fixed-size tensor '{self.fixed[a.name]}'", [lay])
        if not with_channels:
            return lay0 if lay0 is not None else (self.layout[ins[0].name] if ins else None)
        out, s0, k0 = with_channels[0]
        for other, s, k in with_channels[1:]:
            if len(s0) - k0 != len(s) - k:
                self.freeze(node, name, "operands whose channels are different dims", [out, other])
                continue
            out = self.unify(node, out, other)
        self.axis[node.name] = len(_shape(node)) - (len(s0) - k0)
        return out

    def permute(self, node: fx.Node, name: str, lay: Layout | None, in_shape, axis: int) -> Layout | None:
        """A permute/transpose that moves the channels or the batch to another dim (one that moves only
        other dims is not analysed: what it does to positions, e.g. before a flatten, is not tracked).
        Layers refuse a tensor whose batch is not dim 0 (sequence-first), with the reason."""
        if lay is None or in_shape is None:
            return None
        rank = len(in_shape)
        args = [a for a in node.args[1:]] or list(node.kwargs.values())
        if len(args) == 1 and isinstance(args[0], list | tuple):
            args = list(args[0])
        if node.target in ("transpose", torch.transpose):
            d0, d1 = (int(a) % rank for a in args[:2])
            perm = list(range(rank))
            perm[d0], perm[d1] = d1, d0
        else:
            perm = [int(a) % rank for a in args]
        batch = self.batch.get(node.args[0].name, 0)
        if sorted(perm) != list(range(rank)) or (perm.index(axis) == axis and perm.index(batch) == batch):
            self.freeze(node, name, f"unsupported method {node.target}" if isinstance(node.target, str)
                        else f"unsupported function {name}", [lay])  # fmt: skip
            return self.frozen_out(node, _shape(node), None, None)
        self.axis[node.name] = perm.index(axis)
        self.batch[node.name] = perm.index(batch)  # tracked, so that layers can refuse sequence-first tensors
        return lay

    def index(self, node: fx.Node, lay: Layout | None, axis: int) -> Layout | None:
        """``x[:, 0]`` and the like: whole slices and single positions on dims other than the batch and
        the channels keep the channels (at a dim moved down by the positions taken before it)."""
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if lay is None or len(idx) == 0 or any(not (isinstance(i, int) or i == slice(None)) for i in idx):
            return None
        if idx[0] != slice(None) or (axis < len(idx) and idx[axis] != slice(None)):
            return None
        self.axis[node.name] = axis - sum(isinstance(i, int) for i in idx[:axis])
        return lay

    def reshape(self, node, lay, in_shape, shape, axis: int = 1) -> Layout | None:
        if lay is None or in_shape is None:
            return None
        if tuple(in_shape) == tuple(shape):
            fixed = [a for a in node.args[1:] if isinstance(a, int) and a not in (-1,)]
            if len(fixed) <= 1:  # the batch size at most
                return lay
        size_args = list(node.args[1:])
        if len(size_args) == 1 and isinstance(size_args[0], list | tuple):
            size_args = list(size_args[0])
        if axis == 1 and len(shape) == 2 and len(in_shape) >= 2 and len(size_args) == 2 and size_args[1] == -1:
            spatial = math.prod(in_shape[2:])
            return tuple(Segment(s.var, s.size, s.repeat * spatial) for s in lay)
        same_lead = tuple(shape[: axis + 1]) == tuple(in_shape[: axis + 1])
        if 0 < axis < len(shape) and same_lead and len(size_args) == len(shape):
            # the dims after the channels merge or split: the channels stay where they are
            if isinstance(size_args[axis], int) and size_args[axis] != -1:
                reason = f"reshape to the fixed channel count {size_args[axis]}"
                self.freeze(node, _target_name(node), reason, [lay])
            return lay
        self.freeze(node, _target_name(node), f"reshape of {tuple(in_shape)} to the fixed size {tuple(shape)}", [lay])
        return self.frozen_out(node, shape, None, None)


def analyze_model(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    channel_divisor: int = 8,
) -> Analysis:
    """Trace ``model`` with ``example_input`` and find its channel groups, skippable blocks and frozen parts.

    ``example_input`` is one tensor, or a tuple of the model's positional inputs (token ids and an
    attention mask, say: :func:`nasprune.graph.inputs.example_inputs`). The model is not changed (it
    is run once in eval mode, then put back in its mode).
    """
    inputs = tuple(example_input) if isinstance(example_input, tuple | list) else (example_input,)
    gm, untraceable = trace_model(model, inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)  # a model that does not run on the input fails here, with its own message
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GraphError(f"the model does not run on an input of shape {tuple(inputs[0].shape)}: {msg}") from None
    finally:
        model.train(was_training)
    walker = _Walker(gm, untraceable)
    walker.run()
    return _collect(gm, walker, inputs[0], channel_divisor)


def _collect(gm: fx.GraphModule, w: _Walker, example_input: torch.Tensor, divisor: int) -> Analysis:
    v = w.vars
    roots: dict[int, list[LayerUse]] = {}
    producers: dict[int, list[str]] = {}
    for use in w.layers.values():
        for seg in (*use.in_layout, *use.out_layout):
            roots.setdefault(v.find(seg.var), [])
        if use.kind in ("conv1d", "conv2d", "linear") and not use.depthwise:
            producers.setdefault(v.find(use.out_layout[0].var), []).append(use.path)
        if use.kind == "attention":  # writes its heads and, through its output projection, its output
            producers.setdefault(v.find(use.inner_layout[0].var), []).append(use.path)
            producers.setdefault(v.find(use.out_layout[0].var), []).append(f"{use.path}.out_proj")
            roots.setdefault(v.find(use.inner_layout[0].var), [])
    groups: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    blocks: dict[str, int] = {}
    frozen_groups: dict[str, str] = {}
    var_group: dict[int, str] = {}
    for var, owner in w.owner.items():  # frozen channels written by something other than a prunable layer
        root = v.find(var)
        if root in v.frozen and root not in producers and v.frozen[root] != "network input":
            frozen_groups.setdefault(owner, v.frozen[root])
    for root in sorted(roots, key=lambda r: _first_index(gm, producers.get(r, []))):
        names = producers.get(root)
        if not names:
            continue
        name = names[0]
        if root in v.frozen:
            frozen_groups[name] = v.frozen[root]
            continue
        groups[name] = [root]
        sizes[name] = v.size[root]
        blocks[name] = v.block.get(root, 1)
        var_group[root] = name
    head_roots = {v.find(h) for h in (*w.head_vars, *w.split_roots)}
    units = {g: "heads" for g, rs in groups.items() if rs[0] in head_roots}
    var_root = {i: v.find(i) for i in range(len(v.parent))}
    node_shapes = {n.name: s for n in gm.graph.nodes if (s := _shape(n)) is not None}
    seq = _skippable(gm, w)
    within = _within(gm, w, groups, var_root, var_group, seq)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_shape = _shape(out_node.all_input_nodes[0]) if out_node.all_input_nodes else ()
    return Analysis(
        layers=w.layers,
        groups=groups,
        group_size=sizes,
        group_block=blocks,
        group_within=within,
        frozen=w.frozen,
        frozen_groups=frozen_groups,
        sequences=seq,
        digest=_digest(gm),
        input_shape=tuple(example_input.shape[1:]),
        output_shape=tuple(out_shape or ())[1:],
        var_root=var_root,
        var_group=var_group,
        node_shapes=node_shapes,
        node_layouts=dict(w.layout),
        graph=gm,
        group_unit=units,
        node_axes={n: w.ax_of(n) for n, lay in w.layout.items() if lay is not None},
    )


def _first_index(gm: fx.GraphModule, paths: list[str]) -> int:
    order = {str(n.target): i for i, n in enumerate(gm.graph.nodes) if n.op == "call_module"}
    return min((order.get(p, order.get(p.rpartition(".")[0], 10**9)) for p in paths), default=10**9)


def _module_of(node: fx.Node) -> list[str]:
    """The module paths a node was created inside, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p, _ in stack.values()]
    if node.op == "call_module":
        paths.append(str(node.target))
    return paths


def _skippable(gm: fx.GraphModule, w: _Walker) -> dict[str, list[str]]:
    """Residual blocks with one tensor in, one tensor out of the same shape, whose output adds the
    block input itself; consecutive ones form a depth sequence (keep the first d)."""
    nodes = list(gm.graph.nodes)
    inside: dict[str, list[fx.Node]] = {}
    for n in nodes:
        for p in _module_of(n):
            inside.setdefault(p, []).append(n)
    modules = dict(gm.named_modules())
    candidates: dict[str, tuple[fx.Node, fx.Node]] = {}
    chained: dict[str, bool] = {}
    for path, members in inside.items():
        if not path or path in w.untraceable or path not in modules:
            continue
        if isinstance(modules[path], WEIGHTED_TYPES + NORM_TYPES + _PASS_MODULES):
            continue
        member_set = set(members)
        ext_in = {a for n in members for a in n.all_input_nodes if a not in member_set and a.op != "get_attr"}
        ext_out = [n for n in members if any(u not in member_set for u in n.users)]
        if len(ext_out) != 1:
            continue
        y = ext_out[0]
        # the one tensor input of the output's shape is the block's input; other tensors it reads (an
        # attention mask) and sizes computed outside it (an exported graph's) pass it by when it is skipped
        same = [a for a in ext_in if _shape(a) is not None and _shape(a) == _shape(y)]
        others = [a for a in ext_in if a not in same]
        if len(same) != 1 or _shape(y) is None or any(
            w.vars.find(seg.var) not in w.vars.frozen for a in others for seg in w.layout.get(a.name) or ()
        ):
            continue
        x = same[0]
        direct = _ends_in_residual_add(y, x, modules)
        if not direct and not _residual_chain(y, x, modules, member_set):
            continue
        if w.calls.get(path, 1) > 1 or any(p in w.untraceable for p in inside if p.startswith(path + ".")):
            continue
        frozen_inside = any(f.node in {n.name for n in members} for f in w.frozen)
        if frozen_inside:
            continue
        candidates[path] = (x, y)
        chained[path] = not direct
    # a block reached from its input only through a chain of residual adds is kept only when it holds at
    # most one outermost other block (a transformer layer, not the stack of them: Hugging Face's BertLayer
    # holds its BertAttention, itself ``norm(x + attention(x))``); then the outermost ones when nested (a
    # block inside a skippable block stays fixed)
    def outermost_inside(p: str) -> list[str]:
        inner = [q for q in candidates if q.startswith(p + ".")]
        return [q for q in inner if not any(q.startswith(r + ".") for r in inner)]

    candidates = {p: xy for p, xy in candidates.items() if not (chained[p] and len(outermost_inside(p)) > 1)}
    outer = {p: xy for p, xy in candidates.items() if not any(p.startswith(q + ".") for q in candidates)}
    by_input = {xy[0].name: p for p, xy in outer.items()}
    by_output = {xy[1].name: p for p, xy in outer.items()}
    sequences: dict[str, list[str]] = {}
    for path, (x, _) in sorted(outer.items(), key=lambda kv: nodes.index(kv[1][0])):
        if x.name in by_output:  # continues a chain that starts earlier
            continue
        chain = [path]
        while (nxt := by_input.get(outer[chain[-1]][1].name)) is not None:
            chain.append(nxt)
        sequences[_sequence_name(chain)] = chain
    return sequences


def _ends_in_residual_add(y: fx.Node, x: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``y`` is ``add(f(x), x)``, possibly followed by per-channel ops (an activation)."""
    while True:
        if y.op in ("call_function", "call_method") and y.target in _ADD_TARGETS:
            return x in _skip_sources(y, modules)
        per_channel = (
            (y.op == "call_module" and type(modules.get(str(y.target))) in _PASS_MODULES)
            or (y.op == "call_function" and y.target in _PASS_FUNCTIONS)
            or (y.op == "call_method" and y.target in _PASS_METHODS)
        )
        if not per_channel or not y.args or not isinstance(y.args[0], fx.Node):
            return False
        y = y.args[0]


def _skip_sources(add: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The two operands of a residual ``add``, each with what it reads through identity modules: a
    shortcut written as ``self.shortcut = nn.Identity()`` (or a Dropout) adds the block input itself."""
    out = []
    for a in add.args[:2]:
        out.append(a)
        while (
            isinstance(a, fx.Node)
            and a.op == "call_module"
            and type(modules.get(str(a.target))) in IDENTITY_MODULES
            and len(a.args) == 1
            and isinstance(a.args[0], fx.Node)
        ):
            a = a.args[0]
            out.append(a)
    return out


def _residual_chain(y: fx.Node, x: fx.Node, modules: dict[str, nn.Module], members: set[fx.Node]) -> bool:
    """Whether ``y`` reaches ``x`` along residual adds, per-channel ops and LayerNorms only: a
    transformer layer (``x1 = x + f(x); y = x1 + g(x1)``, pre-norm, or post-norm with a LayerNorm after
    each add), whose skipped version (the identity) still runs."""
    seen = 0
    while seen < 64:
        seen += 1
        if y.op in ("call_function", "call_method") and y.target in _ADD_TARGETS:
            if x in _skip_sources(y, modules):
                return True
            inner = [a for a in y.args[:2] if isinstance(a, fx.Node) and a in members]
            return any(_residual_chain(a, x, modules, members) for a in inner if _is_add_path(a, modules))
        if not _is_add_path(y, modules) or not y.args or not isinstance(y.args[0], fx.Node):
            return False
        y = y.args[0]
    return False


def _is_add_path(y: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An add, or a one-input op that keeps a residual stream a residual stream (per-channel, LayerNorm)."""
    return (
        (y.op in ("call_function", "call_method") and y.target in _ADD_TARGETS)
        or (y.op == "call_module" and type(modules.get(str(y.target))) in (*_PASS_MODULES, nn.LayerNorm))
        or (y.op == "call_function" and y.target in _PASS_FUNCTIONS)
        or (y.op == "call_method" and y.target in _PASS_METHODS)
    )


def _sequence_name(chain: list[str]) -> str:
    first, last = chain[0], chain[-1]
    head, _, a = first.rpartition(".")
    head2, _, b = last.rpartition(".")
    if head and head == head2 and a.isdigit() and b.isdigit():
        return f"{head}.{a}-{b}" if a != b else first
    return first if len(chain) == 1 else f"{first}..{last}"


def _within(gm, w: _Walker, groups, var_root, var_group, sequences) -> dict[str, str | None]:
    """Per group, the innermost skippable block all its layers live in (None: outside every block)."""
    blocks = [b for chain in sequences.values() for b in chain]
    members: dict[str, list[str]] = {}
    for use in w.layers.values():
        for seg in (*use.in_layout, *use.out_layout, *use.inner_layout):
            g = var_group.get(var_root[seg.var])
            if g is not None:
                members.setdefault(g, []).append(use.path)
    out: dict[str, str | None] = {}
    for g in groups:
        paths = members.get(g, [])
        inner = [b for b in blocks if paths and all(p.startswith(b + ".") for p in paths)]
        out[g] = max(inner, key=len) if inner else None
    return out


def _digest(gm: fx.GraphModule) -> str:
    """A stable hash of the traced graph: ops, targets, module types and parameter shapes. Constants fx
    attaches to the model (``_tensor_constantN``) count by shape: their numbers grow each time the
    same model object is traced again."""
    h = hashlib.sha256()
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:
        target = _target_name(n)
        if n.op == "get_attr" and target.startswith("_tensor_constant"):
            target = "_tensor_constant"
        h.update(f"{n.op}|{target}|{_shape(n)}|".encode())
        if n.op == "call_module":
            m = modules[str(n.target)]
            h.update(type(m).__name__.encode())
            for name, p in m.named_parameters(recurse=False):
                h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(m.extra_repr().encode())
    return h.hexdigest()[:16]
