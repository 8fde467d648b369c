"""The units onnxruntime executes for a graph-derived subnet, as latency keys (:class:`OpKey`).

A *unit* is what runs as one kernel after onnxruntime's graph fusions, read generically off the fx
graph: a conv or linear layer with the BatchNorm that folds into it, the activation that fuses into
it (ReLU, ReLU6/Clip, HardSwish, HardSigmoid, ...) and, for a conv without activation, a following
residual ``Add`` (and the activation after it); pooling (a mean over the spatial dims is a global
average pool); element-wise ops that stay on their own (a squeeze-excite multiply, an unfused add or
activation); concatenations. Reshapes, flattens, dropout and identities cost nothing and have no key.

Every other op that runs (GELU, Mish, a LayerNorm, an adaptive pool to 2x2, a split, a softmax, a
module fx could not trace, a conv with a non-square kernel, ...) is an ``op`` unit of its own: its
key names the op (:func:`describe_nodes`: the module or function, its arguments, how its nodes
connect) with its tensors' shapes at the config, and it is timed by exporting exactly that op with
torch (:class:`~nasprune.graph.keys.TorchOp`). An op with one tensor input and an output of the
same shape that directly follows a conv or linear layer is fused into that layer's unit (timed with
it), where onnxruntime may fuse it into the layer's kernel. No list of known ops decides whether an
op gets a unit: every op does.

Shapes come from the analysis: spatial sizes are fixed, channel counts follow the config through the
channel layouts, so ``UnitPlan.ops(cfg)`` is a few dictionary look-ups per unit.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasprune.elastic.attention import ElasticMultiheadAttention
from nasprune.elastic.layers import ElasticBatchNorm, ElasticConv, ElasticGroupNorm, ElasticLayerNorm, ElasticLinear
from nasprune.errors import GraphError, LatencyTableError
from nasprune.graph.analyze import (
    IDENTITY_MODULES,
    WEIGHTED_TYPES,
    Analysis,
    LayerUse,
    Layout,
    _target_name,
    active_count,
    analyze_model,
)
from nasprune.graph.inputs import example_inputs
from nasprune.graph.keys import OpKey, TorchOp, register_torch_op
from nasprune.graph.models import build_model
from nasprune.space import GraphSpace, SubnetConfig

_ACT_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu",
}  # fmt: skip
_ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.sigmoid: "sigmoid", torch.sigmoid: "sigmoid", F.silu: "silu", F.tanh: "tanh", torch.tanh: "tanh",
    F.leaky_relu: "leaky_relu",
}  # fmt: skip
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}
_FREE_MODULES = (*IDENTITY_MODULES, nn.Flatten)
_FREE_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, torch.flatten, torch.reshape, getattr}
_FREE_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "size", "dim", "float", "detach"}
_BINARY = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", "sub": "sub", "sub_": "sub",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div", "div": "div", "div_": "div",
}  # fmt: skip
_POOL_MODULES = {nn.MaxPool1d: "max", nn.MaxPool2d: "max", nn.AvgPool1d: "avg", nn.AvgPool2d: "avg"}
_POOL_FUNCTIONS = {F.max_pool1d: "max", F.max_pool2d: "max", F.avg_pool1d: "avg", F.avg_pool2d: "avg"}
_ADAPTIVE = {
    nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max",
    F.adaptive_avg_pool1d: "avg", F.adaptive_avg_pool2d: "avg", F.adaptive_max_pool1d: "max",
    F.adaptive_max_pool2d: "max",
}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a generic unit reads or writes: its traced shape (batch 1) and the layout of its channel
    dim ``axis`` (channel counts follow the config; None: the shape is fixed)."""

    shape: tuple[int, ...]
    layout: Layout | None = None
    axis: int = 1

    def at(self, widths: dict[int, int | None]) -> tuple[int, ...]:
        if self.layout is None:
            return self.shape
        k = self.axis
        return (*self.shape[:k], active_count(self.layout, widths), *self.shape[k + 1 :])


@dataclass(frozen=True)
class InnerLayer:
    """A prunable layer of the model inside a generic unit: resized to the config when timed."""

    use: LayerUse
    macs_per: int
    """MACs per (input channel per group x output channel): kernel size x output positions (0 for norms;
    for attention, its tokens)."""
    weights_per: int
    """Weights per (input channel per group x output channel): the kernel size (0 for norms)."""
    folded: bool = False
    """A BatchNorm folded into the conv before it (no weights of its own when deployed)."""

    def sizes(self, widths: dict[int, int | None]) -> tuple[int, int]:
        return active_count(self.use.in_layout, widths), active_count(self.use.out_layout, widths)

    def inner(self, widths: dict[int, int | None]) -> int:
        """For attention: the features of its kept heads."""
        return active_count(self.use.inner_layout, widths)


@dataclass(frozen=True)
class GenericOp:
    """An op without a hand-written graph, as one unit: what it is, what it reads and writes, what of
    the model's prunable layers it holds, and the fixed-size weights it carries."""

    op: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[InnerLayer, ...] = ()
    fixed_weights: int = 0
    graph_input: bool = False

    def layouts(self) -> list[Layout]:
        out = [t.layout for t in (*self.inputs, *self.outputs) if t.layout]
        inner = [lay for i in self.layers for lay in (i.use.in_layout, i.use.out_layout, i.use.inner_layout) if lay]
        return out + inner


@dataclass(frozen=True)
class UnitSpec:
    """One executed unit: its kind, the channel layouts that set its sizes, its fixed attributes."""

    name: str
    kind: str
    ins: tuple[Layout, ...]
    out: Layout
    spatial: tuple[int, ...]
    fixed: dict = field(default_factory=dict)
    block: str | None = None
    tied: bool = False
    """conv/linear whose input and output are the same channels (depthwise, or a conv joined to its input)."""
    generic: GenericOp | None = None
    """For kind ``op``: the op, timed by exporting it with torch."""

    def layouts(self) -> list[Layout]:
        """Every layout whose channel counts change this unit's key."""
        if self.generic is not None:
            return self.generic.layouts()
        return [self.ins[0], self.out]


def _first(x):
    return x if isinstance(x, int) else x[0]


class UnitPlan:
    """The units of an analysed model and, per config, their latency keys.

    Every op that runs gets a unit: the ones with a hand-written graph (conv, linear, pool, eltwise,
    concat) and, for anything else, an ``op`` unit exported by torch (``generic``).
    """

    def __init__(self, analysis: Analysis, blocks: Iterable[str] = ()):
        self.analysis = analysis
        self.blocks = list(blocks)
        self.units: list[UnitSpec] = []
        self._memo: dict[tuple, OpKey] = {}
        self._exported: dict[str, str] = {}
        self._unsupported: dict[str, str] = {}
        self._plan()

    @property
    def exported(self) -> dict[str, str]:
        """Unit name -> the ops in it that no hand-written graph describes (timed as torch exports them):
        ``op`` units, and conv or linear units with an op fused behind them."""
        return dict(self._exported)

    @property
    def unsupported(self) -> dict[str, str]:
        """Unit name -> why it cannot be timed as a unit: several attentions in one ``op`` unit (what joined
        them could not be cut at a block's boundary). Units stay inside one skippable block, so an
        encoder's shared attention mask is a unit of its own and this is empty for the models tested;
        kept as a guard, so a table is never built from a unit that spans layers."""
        return dict(self._unsupported)

    def check_timeable(self, model: str = "the model") -> None:
        """Raise :class:`GraphError` naming the units a latency table cannot time (:attr:`unsupported`)."""
        if self._unsupported:
            first, why = next(iter(self._unsupported.items()))
            more = f" (and {len(self._unsupported) - 1} more units)" if len(self._unsupported) > 1 else ""
            raise GraphError(
                f"no latency table for {model}: unit '{first}'{more} {why}, so no table is built and no budget "
                "searched on it. The measured range of 'nasprune model inspect' / 'nasprune spaces show' (whole "
                "subnets exported and timed) works"
            )

    # -- planning ------------------------------------------------------------------------------------
    def _block_of(self, node: fx.Node) -> str | None:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [p for p, _ in stack.values()] + ([str(node.target)] if node.op == "call_module" else [])
        for p in reversed(paths):
            for b in self.blocks:
                if p == b or p.startswith(b + "."):
                    return b
        return None

    def _act(self, node: fx.Node) -> str | None:
        if node.op == "call_module":
            return _ACT_MODULES.get(type(self.modules.get(str(node.target))))
        if node.op == "call_function":
            return _ACT_FUNCTIONS.get(node.target)
        if node.op == "call_method":
            return _ACT_METHODS.get(node.target)
        return None

    def _binary(self, node: fx.Node) -> str | None:
        if node.op in ("call_function", "call_method") and not isinstance(node.target, type):
            try:
                return _BINARY.get(node.target)
            except TypeError:
                return None
        return None

    def _only_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _plan(self) -> None:
        a = self.analysis
        gm = a.graph
        if gm is None:
            raise LatencyTableError("the analysis has no graph to plan units from")
        self.modules = dict(gm.named_modules())
        self._index = {n: i for i, n in enumerate(gm.graph.nodes)}
        consumed: set[fx.Node] = set()  # nodes that are part of a unit already
        for node in gm.graph.nodes:
            if node in consumed or node.op not in ("call_module", "call_function", "call_method"):
                continue
            if a.node_shapes.get(node.name) is None and not (_tensor_shapes(node) and not self._free(node)):
                continue  # no tensor out (sizes, attributes, the items of a tuple); a tuple of them: a split, ...
            unit = self._unit(node, consumed)
            if unit is not None:
                self.units.append(unit)

    def _lay(self, node) -> Layout:
        return self.analysis.node_layouts.get(node.name) or ()

    def _free(self, node: fx.Node) -> bool:
        """Reshapes, flattens, dropout, identities, reading attributes or items of a tuple: no kernel."""
        if node.op == "call_module":
            return isinstance(self.modules.get(str(node.target)), _FREE_MODULES)
        if node.op == "call_method":
            return node.target in _FREE_METHODS
        if node.op == "call_function":
            if node.target is operator.getitem:  # of a tuple (a split's parts, sizes); indexing a tensor is not free
                first = node.args[0] if node.args else None
                return not (isinstance(first, fx.Node) and first.name in self.analysis.node_shapes)
            try:
                return node.target in _FREE_FUNCTIONS
            except TypeError:
                return False
        return False

    def _unit(self, node: fx.Node, consumed: set) -> UnitSpec | None:
        a = self.analysis
        path = str(node.target) if node.op == "call_module" else node.name
        block = self._block_of(node)
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        use = a.layers.get(path) if node.op == "call_module" else None
        if use is not None and use.kind in ("conv1d", "conv2d", "linear") and self._keyed_layer(use, module):
            return self._weighted(node, use, module, consumed, block)
        if self._free(node):
            return None
        if (norm := self._skip_norm(node, consumed)) is not None:
            run = self._component(norm, consumed)
            consumed.update(run)
            return self._generic(run, block)
        if self._eligible(node, consumed) or self._joinable(node, consumed):
            run = self._component(node, consumed)
            if any(self._eligible(n, consumed) for n in run):
                run = self._into_skip_norm(run, consumed)
                consumed.update(run)
                return self._generic(run, block)
        consumed.add(node)
        return self._known(node, module, path, block)

    @staticmethod
    def _keyed_layer(use: LayerUse, module) -> bool:
        """A prunable layer with a hand-written graph: a linear layer over features (not over tokens), a
        conv with square kernel, stride, padding and dilation (any other is a generic unit)."""
        if use.kind == "linear":
            return len(use.in_shape) == 2
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        return not isinstance(p, str) and all(len(set(v)) == 1 for v in (k, s, p, d))

    def _eligible(self, node: fx.Node, consumed: set) -> bool:
        """Whether ``node`` is an op without a hand-written unit: a generic unit (with its neighbours)."""
        if node in consumed or node.op not in ("call_module", "call_function", "call_method"):
            return False
        if not _tensor_shapes(node) or self._free(node):
            return False
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        path = str(node.target) if node.op == "call_module" else node.name
        use = self.analysis.layers.get(path) if node.op == "call_module" else None
        if use is not None:
            if use.kind in ("conv1d", "conv2d", "linear"):
                return not self._keyed_layer(use, module)
            return use.kind in ("layernorm", "groupnorm", "attention")
        if isinstance(module, WEIGHTED_TYPES):  # a layer the analysis keeps whole (grouped, shared, ...)
            return True
        if node.name not in self.analysis.node_shapes:  # several tensors out
            return True
        return self._known(node, module, path, None) is None

    def _joinable(self, node: fx.Node, consumed: set) -> bool:
        """Whether ``node`` is a keyed element-wise op on one tensor (an activation, arithmetic with a
        constant, a BatchNorm): such an op joins the generic unit of an op it reads or feeds."""
        if node in consumed or node.op not in ("call_module", "call_function", "call_method"):
            return False
        if node.name not in self.analysis.node_shapes or self._free(node):
            return False
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        path = str(node.target) if node.op == "call_module" else node.name
        use = self.analysis.layers.get(path) if node.op == "call_module" else None
        if use is not None and use.kind != "batchnorm":
            return False
        tensors = [x for x in node.all_input_nodes if x.op != "get_attr" and _tensor_shapes(x)]
        if len(tensors) != 1:
            return False
        known = self._known(node, module, path, None)
        return known is not None and known.kind == "eltwise"

    def _skip_norm(self, node: fx.Node, consumed: set) -> fx.Node | None:
        """The LayerNorm that a residual add feeds alone, in the same block: onnxruntime runs the two as
        one kernel (``SkipLayerNormalization``), so they are one unit. None where ``node`` is not such an add."""
        if node in consumed or self._binary(node) != "add":
            return None
        user = self._only_user(node)
        if user is None or user.op != "call_module" or not isinstance(self.modules.get(str(user.target)), nn.LayerNorm):
            return None
        shapes = self.analysis.node_shapes
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and a.op != "get_attr" and a.name in shapes]
        if len(tensors) != 2 or len({shapes[t.name] for t in tensors}) != 1 or user in consumed:
            return None
        if self._block_of(user) != self._block_of(node) or not self._eligible(user, consumed):
            return None
        return user

    def _into_skip_norm(self, run: list[fx.Node], consumed: set) -> list[fx.Node]:
        """``run`` and, where its result reaches (through ops without a kernel: dropout, the item of an
        attention's tuple) a residual add that feeds a LayerNorm alone, that add and LayerNorm:
        onnxruntime folds the last bias of ``run`` and the add into the norm (``SkipLayerNormalization``
        with a bias), so they are timed together."""
        members = set(run)
        for m in list(run):
            chain, cur = [], m
            while len(cur.users) == 1:
                (nxt,) = cur.users
                if nxt in members or nxt in consumed:
                    break
                if self._free(nxt):
                    chain.append(nxt)
                    cur = nxt
                    continue
                norm = self._skip_norm(nxt, consumed) if cur is not m or chain else None
                if norm is not None and not any(a in members for a in nxt.args[:2] if a is not cur):
                    members.update([*chain, nxt, norm])
                break
        return sorted(members, key=self._index.__getitem__)

    def _component(self, node: fx.Node, consumed: set) -> list[fx.Node]:
        """``node`` and the ops joined to it, in graph order: ops without hand-written units (and keyed
        element-wise ops on one tensor) linked through tensors that only such ops read. One unit, so
        that what onnxruntime fuses among them (a transpose or a scale into a matmul, the nodes of a
        GELU, a BatchNorm into a grouped conv and its activation after it) is timed fused, as it runs.
        A unit stays inside one skippable block (or outside all): what several blocks read (a Hugging Face
        encoder's attention mask, computed once for every layer) is a unit of its own, an input of theirs,
        so that each layer's attention is timed per layer and leaves the subnet with its layer."""
        block = self._block_of(node)

        def ok(y: fx.Node) -> bool:
            if y not in members and self._block_of(y) != block:
                return False
            return (y in members or self._eligible(y, consumed) or self._joinable(y, consumed)
                    or self._skip_norm(y, consumed) in members)  # fmt: skip

        members = {node}
        changed = True
        while changed:  # to a fixed point: a tensor joins its readers when they can all join
            changed = False
            for x in sorted(members, key=self._index.__getitem__):
                near = list(x.users) if x.users and all(ok(u) for u in x.users) else []
                # an op whose readers all joined joins too; not a keyed one, which a conv before it may fuse
                near += [p for p in x.all_input_nodes if p.users and all(u in members for u in p.users)
                         and self._block_of(p) == block
                         and (self._eligible(p, consumed) or self._skip_norm(p, consumed) is x)]  # fmt: skip
                for y in near:
                    if y not in members and ok(y):
                        members.add(y)
                        changed = True
        return sorted(members, key=self._index.__getitem__)

    def _known(self, node: fx.Node, module, path: str, block: str | None) -> UnitSpec | None:
        """The unit of an op with a hand-written graph (no side effects), or None."""
        a = self.analysis
        shape = a.node_shapes[node.name]
        args = [x for x in node.args if isinstance(x, fx.Node)]
        x = args[0] if args else None
        in_shape = a.node_shapes.get(x.name, ()) if x is not None else ()
        use = a.layers.get(path) if node.op == "call_module" else None
        if use is not None and use.kind == "batchnorm":
            return self._elt(path, "batchnorm", node, block)
        if use is not None:
            return None  # LayerNorm, GroupNorm: generic, resized with the config
        act = self._act(node)
        if act is not None:
            return self._elt(path, act, node, block)
        op = self._binary(node)
        if op is not None:
            return self._binary_unit(path, op, node, block)
        pool = self._pool(node, module, in_shape, shape)
        if pool is not None:
            return UnitSpec(path, "pool", (self._lay(x),), self._lay(node), tuple(in_shape[2:]), pool, block)
        if node.op == "call_function" and node.target in (torch.cat, torch.concat):
            if not isinstance(node.args[0], list | tuple):
                return None  # a tuple computed by another op (a split's parts)
            parts = [p for p in node.args[0] if isinstance(p, fx.Node)]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if len(shape) >= 2 and dim % len(shape) == 1:
                return UnitSpec(path, "concat", (self._lay(node),), self._lay(node), tuple(shape[2:]),
                                {"mid": len(parts)}, block)  # fmt: skip
            return None
        if (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        ):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if dims is None or not in_shape:
                return None
            dims = {d % len(in_shape) for d in (dims if isinstance(dims, list | tuple) else [dims])}
            if dims == set(range(2, len(in_shape))):
                return UnitSpec(path, "pool", (self._lay(x),), self._lay(node), tuple(in_shape[2:]),
                                {"op": "global_avg"}, block)  # fmt: skip
        return None

    def _pool(self, node, module, in_shape, shape) -> dict | None:
        """A pooling unit with a hand-written graph: square kernel, stride and padding, no dilation, padding
        counted; anything else (an adaptive pool to another size than 1, ...) is a generic unit."""
        target = type(module) if module is not None else node.target
        if target in _ADAPTIVE:  # the exporter writes a global pool even where the input is already 1x1
            kind = _ADAPTIVE[target]
            if all(s == 1 for s in shape[2:]):
                return {"op": f"global_{kind}"}
            return None
        if target in _POOL_MODULES or target in _POOL_FUNCTIONS:
            kind = _POOL_MODULES.get(target) or _POOL_FUNCTIONS.get(target)
            if module is not None:
                k, s, p = module.kernel_size, module.stride, module.padding
                ceil = int(getattr(module, "ceil_mode", False))
                dil = getattr(module, "dilation", 1)
                plain = (getattr(module, "count_include_pad", True) and getattr(module, "divisor_override", None)
                         is None and not getattr(module, "return_indices", False))  # fmt: skip
            else:
                k = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
                s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
                p = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
                ceil, dil = int(node.kwargs.get("ceil_mode", False)), node.kwargs.get("dilation", 1)
                extra = set(node.kwargs) - {"kernel_size", "stride", "padding", "ceil_mode", "dilation"}
                plain = len(node.args) <= 4 and not extra
            if not plain or any(len(set(v)) > 1 for v in (k, s, p, dil) if isinstance(v, list | tuple)):
                return None
            if _first(dil) != 1:
                return None
            return {"op": kind, "kernel": _first(k), "stride": _first(s), "padding": _first(p), "ceil": ceil}
        return None

    def _elt(self, path, op, node, block) -> UnitSpec:
        x = next(a for a in node.args if isinstance(a, fx.Node))
        in_shape = self.analysis.node_shapes[x.name]
        return UnitSpec(path, "eltwise", (self._lay(node),), self._lay(node), tuple(in_shape[2:]), {"op": op}, block)

    def _binary_unit(self, path, op, node, block) -> UnitSpec:
        shapes = self.analysis.node_shapes
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and a.name in shapes]
        out_shape = shapes[node.name]
        if len(tensors) < 2:
            return UnitSpec(path, "eltwise", (self._lay(node),), self._lay(node), tuple(out_shape[2:]),
                            {"op": f"{op}_scalar"}, block)  # fmt: skip
        broadcast = any(shapes[t.name] != out_shape for t in tensors)
        return UnitSpec(path, "eltwise", (self._lay(node),), self._lay(node), tuple(out_shape[2:]),
                        {"op": op, "mid": int(broadcast)}, block)  # fmt: skip

    def _follower(self, cur: fx.Node, consumed: set) -> fx.Node | None:
        """The op right after a conv or linear unit that fuses into it: ``cur``'s only user, reading
        nothing else, writing a tensor of the same shape, an op without a hand-written unit that holds
        no layer of its own."""
        nxt = self._only_user(cur)
        if nxt is None or nxt.all_input_nodes != [cur] or not self._eligible(nxt, consumed):
            return None
        shapes = self.analysis.node_shapes
        if shapes.get(nxt.name) is None or shapes.get(nxt.name) != shapes.get(cur.name):
            return None
        module = self.modules.get(str(nxt.target)) if nxt.op == "call_module" else None
        if isinstance(module, WEIGHTED_TYPES) or str(nxt.target) in self.analysis.layers:
            return None
        return nxt

    def _weighted(self, node, use, module, consumed, block) -> UnitSpec | None:
        fixed: dict = {}
        if node.args and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder":
            fixed["graph_input"] = 1
        consumed.add(node)
        cur = node
        nxt = self._only_user(cur)
        nxt = nxt if nxt not in consumed else None
        norm = self.analysis.layers.get(str(nxt.target)) if nxt is not None and nxt.op == "call_module" else None
        if norm is not None and norm.kind == "batchnorm":
            consumed.add(nxt)
            cur = nxt
        nxt = self._only_user(cur)
        act = self._act(nxt) if nxt is not None and nxt not in consumed else None
        if act is not None:
            fixed["activation"] = act
            consumed.add(nxt)
            cur = nxt
        elif use.kind != "linear":
            nxt = self._only_user(cur)
            if nxt is not None and nxt not in consumed and self._binary(nxt) == "add":
                others = [a for a in nxt.args[:2] if isinstance(a, fx.Node) and a is not cur]
                same = len(others) == 1 and self.analysis.node_shapes.get(others[0].name) == use.out_shape
                if same:
                    fixed["residual"] = "add"
                    consumed.add(nxt)
                    cur = nxt
                    after = self._only_user(cur)
                    post = self._act(after) if after is not None else None
                    if post is not None:
                        fixed["post"] = post
                        consumed.add(after)
        if "residual" not in fixed and (f := self._follower(cur, consumed)) is not None:
            generic = self._generic([f], block, fused_into=use.path)
            fixed["op"] = generic
            consumed.add(f)
        if use.kind == "linear":
            return UnitSpec(use.path, "linear", (use.in_layout,), use.out_layout, (), fixed, block)
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        fixed.update(kernel=k[0], stride=s[0], padding=p[0], dilation=d[0], dims=1 if use.kind == "conv1d" else 2)
        tied = use.depthwise or (
            len(use.in_layout) == 1 and len(use.out_layout) == 1
            and self.analysis.var_root[use.in_layout[0].var] == self.analysis.var_root[use.out_layout[0].var]
        )  # fmt: skip
        if use.depthwise:
            fixed["depthwise"] = True
        return UnitSpec(use.path, "conv", (use.in_layout,), use.out_layout, tuple(use.in_shape[2:]), fixed, block, tied)

    # -- generic units ---------------------------------------------------------------------------------
    def _tensor(self, node: fx.Node) -> TensorSpec:
        a = self.analysis
        shape = a.node_shapes[node.name]
        lay = a.node_layouts.get(node.name)
        axis = a.node_axes.get(node.name, 1)
        if not lay or len(shape) <= axis or active_count(lay, {}) != shape[axis]:
            return TensorSpec(tuple(shape))
        return TensorSpec(tuple(shape), lay, axis)

    def _generic(self, nodes: list[fx.Node], block: str | None, fused_into: str | None = None):
        """The ``op`` unit of ``nodes`` (ops without hand-written units and what joins them), its torch
        module registered for timing. With ``fused_into`` (a conv or linear layer the op follows), just
        the op's text, for that layer's key."""
        a = self.analysis
        members = set(nodes)
        todo = [x for n in nodes for x in n.all_input_nodes]
        while todo:  # sizes and other non-tensor values the op reads are computed inside the unit
            x = todo.pop()
            if x in members or x.op not in ("call_module", "call_function", "call_method"):
                continue
            if not _tensor_shapes(x):
                members.add(x)
                todo.extend(x.all_input_nodes)
        order = sorted(members, key=self._index.__getitem__)
        attention = [n for n in order if n.target is F.scaled_dot_product_attention]
        if len(attention) > 1 and fused_into is None:  # what joins them (a shared mask) made one unit of them
            where = sorted({self._block_of(n) or "?" for n in attention})
            self._unsupported[str(nodes[0].target) if nodes[0].op == "call_module" else nodes[0].name] = (
                f"holds the scaled_dot_product_attention of {len(attention)} attentions ({', '.join(where)}) "
                "together with the attention mask they share, so it cannot be timed per layer, heads and depth"
            )
        externals: list[fx.Node] = []
        consts: list[fx.Node] = []
        for n in order:
            for x in n.all_input_nodes:
                if x in members or x in externals or x in consts:
                    continue
                (consts if x.op == "get_attr" else externals).append(x)
        outputs = [n for n in order if _tensor_shapes(n) and any(u not in members for u in n.users)]
        if not outputs:
            return None  # computes nothing anything reads: the exporter drops it
        resized = [str(n.target) for n in order if n.op == "call_module" and str(n.target) in a.layers]
        text = describe_nodes(order, externals, self.modules, resized if fused_into is None else ())
        dtypes = tuple(d for x in externals for d in _tensor_dtypes(x))
        out_dtypes = tuple(d for n in outputs for d in _tensor_dtypes(n))
        if all(d == "float32" for d in (*dtypes, *out_dtypes)):
            dtypes = out_dtypes = ()
        build = functools.partial(_build_generic, order, externals, consts, self)
        register_torch_op(text, TorchOp(build, dtypes, out_dtypes))
        label = "+".join(_op_name(n, self.modules) for n in order if _tensor_shapes(n))
        head = nodes[0]
        if fused_into is not None:
            self._exported[fused_into] = f"{type(self.modules[fused_into]).__name__}+{label}"
            return text
        ins: list[TensorSpec] = []
        for x in externals:
            if x.name in a.node_shapes:
                ins.append(self._tensor(x))
            else:  # a tuple of tensors (a split's result read whole): one input per part
                ins.extend(TensorSpec(s) for s in _tensor_shapes(x))
        outs: list[TensorSpec] = []
        for n in outputs:
            if n.name in a.node_shapes:
                outs.append(self._tensor(n))
            else:
                outs.extend(TensorSpec(s) for s in _tensor_shapes(n))
        layers, fixed_weights = [], 0
        for n in order:
            if n.op == "get_attr":
                continue
            if n.op != "call_module":
                continue
            module = self.modules[str(n.target)]
            use = a.layers.get(str(n.target))
            if use is None:
                tensors = (*module.parameters(), *module.buffers())
                fixed_weights += sum(t.numel() for t in tensors if t.is_floating_point())
                continue
            if use.kind in ("conv1d", "conv2d", "linear"):
                kernel = math.prod(getattr(module, "kernel_size", ()) or (1,))
                layers.append(InnerLayer(use, kernel * math.prod(use.out_spatial), kernel))
            elif use.kind == "attention":
                layers.append(InnerLayer(use, math.prod(use.out_spatial), 0))
            else:
                folded = use.kind == "batchnorm" and any(i.use.kind.startswith("conv") or i.use.kind == "linear"
                                                          for i in layers)  # fmt: skip
                layers.append(InnerLayer(use, 0, 0, folded))
        for c in consts:
            value = _fetch(self.analysis.graph, str(c.target))
            fixed_weights += value.numel() if isinstance(value, torch.Tensor) and value.is_floating_point() else 0
        graph_input = any(x.op == "placeholder" for x in externals)
        generic = GenericOp(text, tuple(ins), tuple(outs), tuple(layers), fixed_weights, graph_input)
        name = str(head.target) if head.op == "call_module" else head.name
        self._exported[name] = label
        out0 = outs[0].layout or () if outs else ()
        return UnitSpec(name, "op", tuple(t.layout or () for t in ins), out0, (), {}, block, generic=generic)

    def _generic_key(self, u: UnitSpec, widths: dict[int, int | None]) -> OpKey:
        g = u.generic
        inputs = tuple(t.at(widths) for t in g.inputs)
        outputs = tuple(t.at(widths) for t in g.outputs)
        sizes: list[int] = []
        macs = weights = 0
        for inner in g.layers:
            c_in, c_out = inner.sizes(widths)
            if inner.use.kind == "attention":  # q, k, v, scores, weighted sum, output projection
                d, tokens = inner.inner(widths), inner.macs_per
                sizes += [c_in, d, c_out]
                macs += tokens * (3 * d * c_in + d * c_out) + 2 * tokens * tokens * d
                weights += 3 * d * c_in + d * c_out + 3 * d + c_out
                continue
            sizes += [c_in, c_out]
            per_group_in = 1 if inner.use.depthwise else c_in
            macs += per_group_in * c_out * inner.macs_per
            if inner.weights_per:
                weights += per_group_in * c_out * inner.weights_per + c_out
            elif inner.use.kind in ("layernorm", "groupnorm"):
                weights += 2 * c_out
        c_in = inputs[0][1] if inputs and len(inputs[0]) > 1 else 0
        c_out = outputs[0][1] if outputs and len(outputs[0]) > 1 else 0
        return OpKey("op", c_in, c_out, op=g.op, graph_input=int(g.graph_input), inputs=inputs, outputs=outputs,
                     sizes=tuple(sizes), n_macs=macs, n_weights=weights + g.fixed_weights)  # fmt: skip

    # -- keys ------------------------------------------------------------------------------------------
    def key_at(self, u: UnitSpec, widths: dict[int, int | None]) -> OpKey:
        """``u``'s key when its channel variables have ``widths`` (None: full size)."""
        if u.generic is None:
            return self.key(u, active_count(u.ins[0], widths), active_count(u.out, widths))
        memo = (u.name, id(u), *(widths.get(seg.var) for lay in u.layouts() for seg in lay))
        key = self._memo.get(memo)
        if key is None:
            key = self._memo[memo] = self._generic_key(u, widths)
        return key

    def ops(self, space: GraphSpace, cfg: SubnetConfig) -> list[tuple[str, OpKey]]:
        """``(unit name, key)`` for every unit that runs for ``cfg``, in execution order."""
        widths = self.analysis.widths(cfg.widths)
        skipped = space.skipped_blocks(cfg.depths)
        out = []
        for u in self.units:
            if u.block is not None and u.block in skipped:
                continue
            out.append((u.name, self.key_at(u, widths)))
        return out

    def key(self, u: UnitSpec, c_in: int, c_out: int) -> OpKey:
        f = dict(u.fixed)
        depthwise = f.pop("depthwise", False)
        h = u.spatial[0] if u.spatial else 1
        w = u.spatial[1] if len(u.spatial) > 1 else 1
        if u.kind == "conv":
            groups = c_out if depthwise else 1
            if depthwise:
                c_in = c_out
            return OpKey("conv", c_in, c_out, groups=groups, h_in=h, w_in=w, **f)
        if u.kind == "linear":
            return OpKey("linear", c_in, c_out, **f)
        dims = {"dims": 1} if len(u.spatial) == 1 else {}
        return OpKey(u.kind, c_out if u.kind == "concat" else c_in, c_out, h_in=h, w_in=w, **dims, **f)

    def unit_keys(self, space: GraphSpace) -> list[tuple[UnitSpec, list[OpKey]]]:
        """Per unit, every key it can run as in ``space`` (widths tied across units are not tied here)."""
        a = self.analysis
        choices = {var: ([w * a.unit_channels(g) for w in space.groups[g].widths]
                         if (g := a.var_group.get(root)) in space.groups else (None,))
                   for var, root in a.var_root.items()}  # fmt: skip

        def counts(layout: Layout) -> list[int]:
            opts = [[(seg.size if c is None else c) * seg.repeat for c in choices[seg.var]] for seg in layout]
            return sorted({sum(combo) for combo in itertools.product(*opts)}) if opts else [0]

        out = []
        for u in self.units:
            if u.generic is not None:  # every joint choice of the groups it reads or writes
                groups = sorted({g for lay in u.layouts() for seg in lay if (g := a.group_of(seg.var)) in space.groups})
                keys = {self.key_at(u, a.widths(dict(zip(groups, combo, strict=True))))
                        for combo in itertools.product(*(space.groups[g].widths for g in groups))}
                out.append((u, sorted(keys)))
                continue
            outs = counts(u.out)
            if u.tied or u.kind in ("pool", "eltwise", "concat"):
                out.append((u, [self.key(u, c, c) for c in outs]))
            else:
                out.append((u, [self.key(u, ci, co) for ci in counts(u.ins[0]) for co in outs]))
        return out

    def all_keys(self, space: GraphSpace) -> list[OpKey]:
        """Every key a subnet of ``space`` can run (a superset where widths are tied across units)."""
        return sorted({k for _, keys in self.unit_keys(space) for k in keys})


def plan_for(space: GraphSpace) -> UnitPlan:
    """The unit plan of a graph-derived space (its model built from its reference; cached per space)."""
    blocks = tuple(b for seq in space.sequences.values() for b in seq.blocks)
    kwargs = tuple(sorted(space.model_kwargs.items()))
    shape = tuple(space.input_shape)
    return _plan_cached(space.model, kwargs, shape, space.input_kind, space.channel_divisor, space.graph_digest, blocks)


@functools.lru_cache(maxsize=32)
def _plan_cached(model_ref: str, kwargs: tuple, input_shape: tuple, input_kind: str, divisor: int, digest: str,
                 blocks: tuple):  # fmt: skip
    model = build_model(model_ref, dict(kwargs)).eval()
    analysis = analyze_model(model, example_inputs(input_shape, 1, input_kind), divisor)
    if analysis.digest != digest:
        raise GraphError(f"the graph of {model_ref} (digest {analysis.digest}) is not the one its space was derived "
                         f"from ({digest}); derive the space again")  # fmt: skip
    plan = UnitPlan(analysis, blocks)
    plan.check_timeable(model_ref)
    return plan


def extreme_graph(
    space: GraphSpace, plan: UnitPlan, total: Callable[[SubnetConfig], float], pick=min
) -> tuple[SubnetConfig, float]:
    """The config minimising (or maximising) ``total`` over ``space``, by coordinate descent from the
    smallest (largest) config: each sweep tries every choice of every depth and width and keeps any
    improvement, until a sweep changes nothing. Exact when costs grow with widths and depths (then
    the start is optimal); otherwise a local optimum, which :func:`bound_graph` brackets."""
    better = (lambda a, b: a < b - 1e-12) if pick is min else (lambda a, b: a > b + 1e-12)
    cfg = space.smallest() if pick is min else space.largest()
    best = total(cfg)
    depths, widths = dict(cfg.depths), {g: pick(c) for g, c in space.width_layers().items()}
    for _ in range(10):
        changed = False
        for kind, name, options in [
            *(("d", s, c) for s, c in space.depth_choices().items()),
            *(("w", g, c) for g, c in space.width_layers().items()),
        ]:
            for v in options:
                trial_d = {**depths, name: v} if kind == "d" else depths
                trial_w = {**widths, name: v} if kind == "w" else widths
                cand = space.config(trial_d, trial_w)
                cost = total(cand)
                if better(cost, best):
                    best, depths, widths, cfg, changed = cost, trial_d, trial_w, cand, True
        if not changed:
            break
    return cfg, best


Vec = tuple[float, ...]
_Front = list[tuple[Vec, tuple]]  # (summed cost vector, ((variable, value), ...) choices made)


def _pareto(points: _Front, sign: float) -> _Front:
    """The points no other point beats in every component (smaller for min, larger for max)."""
    ordered = sorted(points, key=lambda p: tuple(sign * x for x in p[0]))
    kept: _Front = []
    for v, c in ordered:
        sv = [sign * x for x in v]
        if not any(all(sign * k <= x for k, x in zip(kv, sv, strict=True)) for kv, _ in kept):
            kept.append((v, c))
    return kept


def _join(a: _Front, b: _Front, sign: float) -> _Front:
    return _pareto([(tuple(x + y for x, y in zip(va, vb, strict=True)), ca + cb) for va, ca in a for vb, cb in b], sign)


def exact_extreme(
    space: GraphSpace,
    plan: UnitPlan,
    vec: Callable[[OpKey], Vec],
    pick=min,
    score: Callable[[Vec], float] = operator.itemgetter(0),
    max_work: int = 2_000_000,
) -> tuple[SubnetConfig, float] | None:
    """The exact extreme of ``score(sum of vec(key))`` over every subnet, without enumerating them.

    A subnet's cost is a sum over units, and a unit's key depends only on the widths of the groups
    its channels belong to and on whether its block runs (a sequence's depth). That is a factor graph
    over the space's choices; variables are eliminated one at a time (the one whose neighbourhood has
    the fewest joint choices first), each message keeping, per assignment of its neighbours, the
    Pareto front of cost vectors (``score`` must not decrease when a component grows, so the extreme
    lies on it). Exact for any such costs. Returns None when the elimination would exceed
    ``max_work`` front combinations (a densely connected graph); callers then fall back to
    :func:`extreme_graph`.
    """
    a = plan.analysis
    sign = 1.0 if pick is min else -1.0
    choices: dict[tuple, tuple[int, ...]] = {("w", g): tuple(c) for g, c in space.width_layers().items()}
    choices.update({("d", s): tuple(c) for s, c in space.depth_choices().items()})
    where = {b: (s, i) for s, seq in space.sequences.items() for i, b in enumerate(seq.blocks)}
    zero: Vec | None = None

    def groups_in(layout: Layout) -> list[tuple]:
        return sorted({("w", g) for seg in layout if (g := a.group_of(seg.var)) in space.groups})

    factors: list[tuple[tuple, dict[tuple, _Front]]] = []
    work = 0
    for u in plan.units:
        scope = sorted({g for lay in u.layouts() for g in groups_in(lay)})
        seq = where.get(u.block) if u.block is not None else None
        if seq is not None:
            scope.append(("d", seq[0]))
        scope_t = tuple(scope)
        table: dict[tuple, _Front] = {}
        for values in itertools.product(*(choices[v] for v in scope_t)):
            assign = dict(zip(scope_t, values, strict=True))
            if seq is not None and assign[("d", seq[0])] <= seq[1]:
                table[values] = [(None, ())]  # the block is skipped: the unit costs nothing
                continue
            widths = a.widths({g: w for (kind, g), w in assign.items() if kind == "w"})
            v = vec(plan.key_at(u, widths))
            zero = zero or tuple(0.0 for _ in v)
            table[values] = [(v, ())]
        work += len(table)
        factors.append((scope_t, table))
    if zero is None:
        return None
    for _, table in factors:  # skipped units: the zero vector, now that its length is known
        for values, front in table.items():
            if front[0][0] is None:
                table[values] = [(zero, ())]

    remaining = {v for scope, _ in factors for v in scope}
    while remaining:

        def joint(var, factors=factors):
            scope = {x for sc, _ in factors if var in sc for x in sc}
            n = 1
            for x in scope:
                n *= len(choices[x])
            return n

        var = min(sorted(remaining), key=joint)
        touching = [f for f in factors if var in f[0]]
        factors = [f for f in factors if var not in f[0]]
        new_scope = tuple(sorted({x for sc, _ in touching for x in sc} - {var}))
        table = {}
        for values in itertools.product(*(choices[x] for x in new_scope)):
            assign = dict(zip(new_scope, values, strict=True))
            points: _Front = []
            for val in choices[var]:
                assign[var] = val
                front: _Front = [(zero, ((var, val),))]
                for sc, t in touching:
                    part = t[tuple(assign[x] for x in sc)]
                    work += len(front) * len(part)
                    front = _join(front, part, sign)
                points += front
            table[values] = _pareto(points, sign)
            if work > max_work:
                return None
        factors.append((new_scope, table))
        remaining.discard(var)

    total: _Front = [(zero, ())]
    for _, t in factors:
        total = _join(total, t[()], sign)
    _, chosen = pick(total, key=lambda p: score(p[0]))
    picked = dict(chosen)
    depths = {s: picked.get(("d", s), max(c) if pick is max else min(c)) for s, c in space.depth_choices().items()}
    widths = {g: picked.get(("w", g), pick(c)) for g, c in space.width_layers().items()}
    cfg = space.config(depths, widths)
    keys = [k for _, k in plan.ops(space, cfg)]
    return cfg, score(tuple(sum(c) for c in zip(*(vec(k) for k in keys), strict=True)))


def bound_graph(space: GraphSpace, plan: UnitPlan, cost: Callable[[OpKey], float], pick=min) -> float:
    """A bound on the summed unit cost of any subnet: per unit, its cheapest (dearest) key, with units
    in skippable blocks free for the minimum. No subnet is below (above) it."""
    total = 0.0
    for u, keys in plan.unit_keys(space):
        best = pick(cost(k) for k in keys)
        if pick is min and u.block is not None:
            best = min(best, 0.0)
        total += best
    return total


# -- generic units: their text and their torch module --------------------------------------------------

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _tensor_metas(node: fx.Node) -> list:
    """The traced metadata (shape, dtype) of each tensor a node returns (a tensor, or a tuple/list/dict of them)."""
    out: list = []

    def walk(meta) -> None:
        if hasattr(meta, "shape"):
            out.append(meta)
        elif isinstance(meta, list | tuple):
            for m in meta:
                walk(m)
        elif isinstance(meta, dict):
            for m in meta.values():
                walk(m)

    walk(node.meta.get("tensor_meta"))
    return out


def _tensor_shapes(node: fx.Node) -> list[tuple[int, ...]]:
    """The shapes of the tensors a node returns, as traced."""
    return [tuple(m.shape) for m in _tensor_metas(node)]


def _tensor_dtypes(node: fx.Node) -> list[str]:
    """The dtypes (``float32``, ``int64``, ``bool``...) of the tensors a node returns, as traced; one per
    :func:`_tensor_shapes` entry."""
    return [str(getattr(m, "dtype", torch.float32)).removeprefix("torch.") for m in _tensor_metas(node)]


def _module_text(module: nn.Module) -> str:
    """A module as its repr on one line; a class outside torch.nn is qualified, with a hash of its
    plain attributes (two instances with equal text compute the same thing)."""
    text = _ADDRESS.sub("", " ".join(repr(module).split()))
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):  # with the arguments its repr leaves out, where not the default
        try:
            params = inspect.signature(cls.__init__).parameters
        except (TypeError, ValueError):
            params = {}
        hidden = [f"{k}={v!r}" for k, v in vars(module).items()
                  if k in params and f"{k}=" not in text and params[k].default is not inspect.Parameter.empty
                  and not _same(v, params[k].default) and k != "inplace"]  # fmt: skip
        return text + (f"[{', '.join(hidden)}]" if hidden else "")
    simple = bool | int | float | str | tuple | type(None)
    plain = sorted((k, repr(v)) for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, simple))
    digest = hashlib.sha256(repr(plain).encode()).hexdigest()[:8]
    return f"{cls.__module__}.{text}#{digest}"


def _same(value, default) -> bool:
    """A module attribute equal to its constructor default (``(1, 1)`` is the default ``1``)."""
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    return value == default


def describe_nodes(
    order: list[fx.Node], inputs: list[fx.Node], modules: dict[str, nn.Module], resized: Iterable[str] = ()
) -> str:
    """The text of a unit of fx nodes: each node's op (a module as its repr, a function by its
    qualified name, a method as ``.name``) with its arguments, ``$i`` for the unit's i-th input
    (``$i[k]``: a tuple of k tensors) and ``%j`` for the result of its j-th node; a module the config
    resizes (a prunable layer of the model: path in ``resized``) is marked ``~``. Equal texts compute
    the same thing at equal shapes and sizes."""
    local = {n: f"%{j}" for j, n in enumerate(order)}
    ext = {}
    for i, n in enumerate(inputs):
        whole = hasattr(n.meta.get("tensor_meta"), "shape")
        ext[n] = f"${i}" if whole else f"${i}[{len(_tensor_shapes(n))}]"
    resized = set(resized)

    def fmt(arg) -> str:
        if isinstance(arg, fx.Node):
            if arg.op == "get_attr":
                return f"<{arg.target}{tuple(_tensor_shapes(arg)[0]) if _tensor_shapes(arg) else ''}>"
            return local.get(arg) or ext.get(arg) or "?"
        if isinstance(arg, tuple):
            return "(" + ", ".join(map(fmt, arg)) + ("," if len(arg) == 1 else "") + ")"
        if isinstance(arg, list):
            return "[" + ", ".join(map(fmt, arg)) + "]"
        if isinstance(arg, dict):
            return "{" + ", ".join(f"{k!r}: {fmt(v)}" for k, v in arg.items()) + "}"
        return _ADDRESS.sub("", repr(arg))

    parts = []
    for n in order:
        if n.op == "call_module":
            what = ("~" if str(n.target) in resized else "") + _module_text(modules[str(n.target)])
        elif n.op == "call_method":
            what = f".{n.target}"
        else:
            what = _target_name(n)
        args = [fmt(x) for x in n.args] + [f"{k}={fmt(v)}" for k, v in sorted(n.kwargs.items())]
        if n.op == "call_module" and len(order) == 1 and args == ["$0"]:
            parts.append(what)  # a module on the unit's one input: its repr says it all
        else:
            parts.append(f"{what}({', '.join(args)})")
    if len(order) == 1:
        return parts[0]
    return "; ".join(f"%{j}={p}" for j, p in enumerate(parts))


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A node's op in a word: its module's class, its function's or method's name."""
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _fetch(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _resized(module: nn.Module, inner: InnerLayer, c_in: int, c_out: int, heads_features: int = 0) -> nn.Module:
    """A plain copy of one of the model's prunable layers at ``c_in`` -> ``c_out`` channels (and, for
    attention, ``heads_features`` of kept heads), through the elastic layer the supernet would use, so
    it is the layer a subnet deploys."""
    kind = inner.use.kind
    if kind == "attention":
        e = ElasticMultiheadAttention(module)
        e.in_sel, e.inner_sel, e.out_sel = c_in, heads_features, c_out
        return e.export().eval()
    if kind in ("conv1d", "conv2d", "linear"):
        e = ElasticConv(module) if kind != "linear" else ElasticLinear(module)
        e.in_sel, e.out_sel = c_in, c_out
    else:
        e = {"batchnorm": ElasticBatchNorm, "layernorm": ElasticLayerNorm, "groupnorm": ElasticGroupNorm}[kind](module)
        e.sel = c_out
    return e.export().eval()


def _build_generic(order: list[fx.Node], inputs: list[fx.Node], consts: list[fx.Node], plan: UnitPlan, key: OpKey):
    """The torch module of a generic unit at ``key``'s sizes: its nodes copied into a graph of their own,
    reading one placeholder per input tensor (a tuple input: one per part), the model's prunable layers
    resized to ``key.sizes``."""
    gm = plan.analysis.graph
    graph = fx.Graph()
    env: dict[fx.Node, object] = {}
    root: dict[str, object] = {}
    count = 0
    for x in inputs:
        if x.name in plan.analysis.node_shapes:
            env[x] = graph.placeholder(f"x{count}")
            count += 1
        else:
            parts = []
            for _ in _tensor_shapes(x):
                parts.append(graph.placeholder(f"x{count}"))
                count += 1
            env[x] = tuple(parts)
    for c in consts:
        env[c] = graph.get_attr(str(c.target))
        root[str(c.target)] = _fetch(gm, str(c.target))
    sizes = list(key.sizes)
    members = set(order)
    for n in order:
        if n.op == "call_module":
            module = plan.modules[str(n.target)]
            use = plan.analysis.layers.get(str(n.target))
            if use is not None and key.kind == "op":
                c_in, inner = sizes.pop(0), (sizes.pop(0) if use.kind == "attention" else 0)
                module = _resized(module, InnerLayer(use, 0, 0), c_in, sizes.pop(0), inner)
            root[str(n.target)] = module
        env[n] = graph.node_copy(n, lambda a: env[a])
    outs = [env[n] for n in order if _tensor_shapes(n) and (key.kind != "op" or any(u not in members for u in n.users))]
    graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    return fx.GraphModule(root, graph).eval()


__all__ = ["GenericOp", "UnitPlan", "UnitSpec", "bound_graph", "describe_nodes", "exact_extreme", "extreme_graph"]
