"""Minimal ONNX graphs, one per :class:`~nasprune.latency.ops.OpKey`, in the form the exporter writes.

``nasprune.export`` (torch dynamo, ``optimize=True``) writes BatchNorm folded into the preceding
``Conv``/``Gemm`` as a bias, ``Relu`` as its own node, the residual as ``Add`` and the CNN head as
``ReduceMean`` (axes ``[-1, -2]``, keepdims) + ``Reshape`` + ``Gemm`` (``transB=1``). The graphs
here use the same nodes, opset and a symbolic batch axis, so onnxruntime applies the same fusions
(Conv+ReLU, Conv+Add+ReLU, Gemm+ReLU, NCHWc layout) to both. Units that read a feature map are
built behind a :class:`Producer`, so their input arrives as it does inside a network. Weights are
random: values do not change the latency of dense kernels.

Any other op (an ``op`` key, or the op fused behind a conv or linear key) is exported by torch on its
own, through the exporter and settings of the deployment path, at the key's shapes (its
:class:`TorchOp`, registered by the unit plan that found it) and spliced into the same kind of
graph: whatever the exporter writes for it and onnxruntime makes of that is what is timed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nasprune.errors import LatencyTableError
from nasprune.graph.keys import OpKey, torch_op

OPSET = 18
IR_VERSION = 10


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.opsets: dict[str, int] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, stem: str, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(stem, (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(
        self, x: str, c_in: int, c_out: int, k: int, stride: int, groups: int = 1, dims: int = 2,
        pad: int | None = None, dilation: int = 1,
    ) -> str:  # fmt: skip
        w = self.weight("w", (c_out, c_in // groups, *[k] * dims), c_in // groups * k**dims)
        b = self.weight("b", (c_out,), c_out)
        p = k // 2 if pad is None else pad
        return self.node(
            "Conv", [x, w, b], kernel_shape=[k] * dims, strides=[stride] * dims, pads=[p] * (2 * dims),
            group=groups, dilations=[dilation] * dims,
        )  # fmt: skip

    def act(self, x: str, name: str) -> str:
        """The nodes the exporter writes for an activation (onnxruntime fuses what it can into a conv)."""
        if name == "none":
            return x
        if name == "relu6":
            lo, hi = self.const("lo", np.array(0, np.float32)), self.const("hi", np.array(6, np.float32))
            return self.node("Clip", [x, lo, hi])
        if name == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        ops = {
            "relu": ("Relu", {}), "hardswish": ("HardSwish", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}),
            "hardsigmoid": ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}), "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
        }  # fmt: skip
        if name not in ops:
            raise ValueError(f"no ONNX form for activation {name!r}")
        op, attrs = ops[name]
        return self.node(op, [x], **attrs)

    def gemm(self, x: str, c_in: int, c_out: int) -> str:
        w = self.weight("w", (c_out, c_in), c_in)
        b = self.weight("b", (c_out,), c_out)
        return self.node("Gemm", [x, w, b], transB=1)

    def splice(self, fragment: onnx.ModelProto, inputs: list[str]) -> list[str]:
        """Insert an exported model's graph reading ``inputs``; returns the names of its outputs."""
        self._n += 1
        prefixed = onnx.compose.add_prefix(fragment, f"t{self._n}/")
        g = prefixed.graph
        rename = {vi.name: x for vi, x in zip(g.input, inputs, strict=True)}
        for node in g.node:
            _rename_inputs(node, rename)
        self.nodes.extend(g.node)
        self.inits.extend(g.initializer)
        for f in prefixed.functions:
            if all(f.name != h.name or f.domain != h.domain for h in self.functions):
                self.functions.append(f)
        for o in prefixed.opset_import:
            self.opsets.setdefault(o.domain, o.version)
        return [rename.get(o.name, o.name) for o in g.output]

    def model(
        self, x: str | list, x_shape: list, y: str | list, y_shape: list,
        x_types: list[int] | None = None, y_types: list[int] | None = None,
    ) -> bytes:  # fmt: skip
        """A model with inputs ``x`` (a name, or a list of names with a list of shapes) and outputs ``y``;
        float32 unless ``x_types`` / ``y_types`` give ONNX element types."""
        xs, x_shapes = ([x], [x_shape]) if isinstance(x, str) else (x, x_shape)
        ys, y_shapes = ([y], [y_shape]) if isinstance(y, str) else (y, y_shape)
        x_types = x_types or [TensorProto.FLOAT] * len(xs)
        y_types = y_types or [TensorProto.FLOAT] * len(ys)
        graph = helper.make_graph(
            self.nodes,
            "op",
            [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(xs, x_types, x_shapes, strict=True)],
            [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(ys, y_types, y_shapes, strict=True)],
            initializer=self.inits,
        )
        opsets = [helper.make_opsetid(d, v) for d, v in {"": OPSET, **self.opsets}.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="nasprune", functions=self.functions)
        model.ir_version = IR_VERSION
        return model.SerializeToString()


def _rename_inputs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Point a node's inputs (and those of its subgraphs, which may read outer names) at new names."""
    for i, name in enumerate(node.input):
        if name in rename:
            node.input[i] = rename[name]
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for n in sub.node:
                _rename_inputs(n, rename)


# -- ops exported by torch ---------------------------------------------------------------------------


_FRAGMENTS: dict[tuple, onnx.ModelProto] = {}
_FRAGMENTS_LOCK = threading.Lock()


def fused_shape(key: OpKey) -> tuple[int, ...]:
    """The shape (batch 1) of a conv or linear key's output, which its fused ``op`` reads."""
    if key.kind == "linear":
        return (1, key.c_out)
    return (1, key.c_out, key.h_out) if key.dims == 1 else (1, key.c_out, key.h_out, key.w_out)


def torch_fragment(key: OpKey) -> onnx.ModelProto:
    """The ONNX graph torch's exporter writes for the op of ``key`` alone (cached per key).

    The same exporter and settings as the deployment path (``nasprune.export``: dynamo, optimised,
    opset 18, dynamic batch axis), the op at the key's shapes. Raises :class:`LatencyTableError` if no
    unit plan of this process registered the op, or if torch cannot export it.
    """
    shapes = key.inputs if key.kind == "op" else (fused_shape(key),)
    cache_key = (key.op, shapes, key.sizes)
    with _FRAGMENTS_LOCK:
        hit = _FRAGMENTS.get(cache_key)
    if hit is not None:
        return hit
    op = torch_op(key.op)
    if op is None:
        raise LatencyTableError(
            f"no torch module registered for {key.describe()}: such units are exported from the model, so time "
            "them through its space (build_table/extend_table with the space, which plans its units first)"
        )
    module = op.build(key)
    proto = _export_fragment(module, shapes, key.describe(), op.dtypes)
    with _FRAGMENTS_LOCK:
        _FRAGMENTS[cache_key] = proto
    return proto


def _example(shape: tuple[int, ...], dtype: str, gen):
    """An input to export a fragment with: random floats; for integer and boolean inputs (a token
    model's ids and attention mask) ones, valid as a token id, a mask value and an index."""
    import torch

    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return torch.randn(shape, generator=gen, dtype=getattr(torch, dtype))
    return torch.ones(shape, dtype=getattr(torch, dtype))


def _export_fragment(
    module, shapes: tuple[tuple[int, ...], ...], what: str, dtypes: tuple[str, ...] = ()
) -> onnx.ModelProto:
    import torch

    from nasprune._quiet import quiet_export
    from nasprune.export import _EXPORT_LOCK
    from nasprune.export import OPSET as EXPORT_OPSET

    gen = torch.Generator().manual_seed(0)
    xs = tuple(_example(s, d, gen) for s, d in zip(shapes, dtypes or ("float32",) * len(shapes), strict=True))
    batch = torch.export.Dim("batch", min=1, max=4096)
    errors = []
    batched = tuple({0: batch} if x.dim() and x.shape[0] == 1 else None for x in xs)
    for dynamic in (batched, None):  # an op that specialises the batch size still gets a graph
        try:
            with _EXPORT_LOCK, quiet_export(), torch.no_grad():
                program = torch.onnx.export(
                    module.eval(), xs, None, dynamo=True, external_data=False, optimize=True, verbose=False,
                    opset_version=EXPORT_OPSET, dynamic_shapes=dynamic,
                )  # fmt: skip
            return program.model_proto
        except Exception as e:  # the exporter raises many types
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    raise LatencyTableError(f"torch cannot export {what} on its own to time it ({errors[-1]})")


@dataclass(frozen=True, order=True)
class Producer:
    """A 1x1 Conv+ReLU writing a ``c`` x ``h`` x ``w`` feature map: what feeds a unit inside a network.

    A unit that reads a feature map is timed behind one, so onnxruntime lays out and fuses it as it
    would mid-network (e.g. the residual ``Add`` fuses into the conv only when its input comes from an
    NCHWc conv, never from a graph input); the producer's own time is measured alone and subtracted.
    ``more`` are further feature maps (c, h, w) the unit reads (the other operand of an add, the
    other inputs of a concat), each behind a producer of its own; ``dims`` 1 for 1-D maps (``h`` long).
    """

    c: int
    h: int
    w: int
    dims: int = 2
    more: tuple[tuple[int, int, int], ...] = ()

    def shapes(self) -> list[tuple[int, int, int]]:
        return [(self.c, self.h, self.w), *self.more]

    def spatial(self, h: int, w: int) -> list[int]:
        return [h] if self.dims == 1 else [h, w]


def _maps(shapes: tuple[tuple[int, ...], ...]) -> tuple[int, list[tuple[int, int, int]]] | None:
    """``(dims, [(c, h, w)...])`` when every shape is a feature map of the same rank (N,C,L or N,C,H,W)."""
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1 or not ranks <= {3, 4} or any(s[0] != 1 for s in shapes):
        return None
    dims = ranks.pop() - 2
    return dims, [(s[1], s[2], s[3] if dims == 2 else 1) for s in shapes]


def producer_of(key: OpKey) -> Producer | None:
    """The producer a key is timed behind (None: the key reads the graph input, as in a network)."""
    if key.graph_input or key.kind == "linear":
        return None
    if key.kind == "op":  # feature maps come from a conv, as inside a network; anything else is fed as is
        if not _float_inputs(key):  # token ids, a mask: fed as they are
            return None
        maps = _maps(key.inputs) if key.inputs else None
        if maps is None:
            return None
        dims, (first, *more) = maps
        return Producer(*first, dims, tuple(more))
    if key.kind in ("conv", "pool") and key.op in ("", "max", "avg", "global_avg", "global_max"):
        more = ((key.c_out, key.h_out, key.w_out),) if key.residual == "add" else ()
        return Producer(key.c_in, key.h_in, key.w_in, key.dims, more)
    if key.kind == "eltwise":
        binary = key.op in ("add", "mul", "sub", "div")
        more = ((key.c_in, 1, 1) if key.mid else (key.c_in, key.h_in, key.w_in),) if binary else ()
        return Producer(key.c_in, key.h_in, key.w_in, key.dims, more)
    if key.kind == "concat":
        parts = _split(key.c_out, max(key.mid, 1))
        return Producer(parts[0], key.h_in, key.w_in, key.dims, tuple((c, key.h_in, key.w_in) for c in parts[1:]))
    return None


@dataclass(frozen=True, order=True)
class Consumer:
    """A 1x1 depthwise conv reading a unit's ``c`` x ``h`` x ``w`` output, as the next layer would.

    onnxruntime fuses some activations (HardSwish) into a conv only when the conv's output is read
    by another node, not when it is a graph output; and an op that leaves the NCHWc layout pays for
    the reorder back only when something reads it in NCHWc. Graph-derived units are timed with a
    consumer behind them; its own cost (producer + consumer minus producer alone) is subtracted.
    """

    c: int
    h: int
    w: int
    dims: int = 2


def consumers_of(key: OpKey) -> list[Consumer]:
    """The consumers a unit is timed with: one per feature-map output (none for linear units and
    outputs without space)."""
    if key.kind == "op":
        out = []
        for s, float_out in zip(key.outputs, _float_outputs(key), strict=True):
            if float_out and (maps := _maps((s,))) is not None:
                dims, [(c, h, w)] = maps
                out.append(Consumer(c, h, w, dims))
        return out
    if key.kind == "linear" or not key.spatial:
        return []
    return [Consumer(key.c_out, key.h_out, key.w_out, key.dims)]


def _float_inputs(key: OpKey) -> bool:
    op = torch_op(key.op)
    return op is None or all(d.startswith("float") for d in op.dtypes)


def _float_outputs(key: OpKey) -> list[bool]:
    """Per output of an ``op`` key: is it a float tensor (a mask is not, and no conv can read it)?"""
    op = torch_op(key.op)
    dtypes = op.out_dtypes if op is not None and op.out_dtypes else ("float32",) * len(key.outputs)
    return [d.startswith("float") for d in dtypes]


def consumer_of(key: OpKey) -> Consumer | None:
    """The first of :func:`consumers_of` (None if there is none)."""
    cons = consumers_of(key)
    return cons[0] if cons else None


def _consume(g: _Builder, y: str, c: Consumer) -> str:
    return g.conv(y, c.c, c.c, 1, 1, groups=c.c, dims=c.dims, pad=0)


def consumer_model(c: Consumer, seed: int = 2) -> bytes:
    """A producer feeding the consumer: minus the producer alone, the consumer's own time."""
    g = _Builder(seed)
    p = Producer(c.c, c.h, c.w, c.dims)
    names, shapes, outs = _produce_all(g, p)
    y = _consume(g, outs[0], c)
    return g.model(names, shapes, y, shapes[0])


def consumer_baseline(c: Consumer) -> Producer:
    return Producer(c.c, c.h, c.w, c.dims)


def _split(c: int, n: int) -> list[int]:
    return [c // n + (1 if i < c % n else 0) for i in range(n)]


def _produce_all(g: _Builder, p: Producer) -> tuple[list[str], list[list], list[str]]:
    """Graph inputs, their shapes and the producers' outputs."""
    names, shapes, outs = [], [], []
    for i, (c, h, w) in enumerate(p.shapes()):
        x = "x" if i == 0 else f"x{i}"
        names.append(x)
        shapes.append(["batch", c, *p.spatial(h, w)])
        outs.append(g.node("Relu", [g.conv(x, c, c, 1, 1, dims=p.dims)]))
    return names, shapes, outs


def _produce(g: _Builder, x: str, p: Producer) -> str:
    return g.node("Relu", [g.conv(x, p.c, p.c, 1, 1)])


def producer_model(p: Producer, seed: int = 1) -> bytes:
    """The producer(s) alone (their time is subtracted from the units timed behind them)."""
    g = _Builder(seed)
    names, shapes, outs = _produce_all(g, p)
    return g.model(names, shapes, outs, shapes)


def op_model(key: OpKey, seed: int = 0) -> bytes:
    """The serialised ONNX model running ``key`` (behind its producer, before its consumer, if any).

    Input ``x`` (and ``x1``... for a producer with several outputs), output ``y``, symbolic batch
    axis ``batch``.
    """
    if key.kind == "op":
        return _torch_unit_model(key, seed)
    if key.kind != "linear":
        return _unit_model(key, seed)
    g = _Builder(seed)
    y = g.act(g.gemm("x", key.c_in, key.c_out), key.activation)
    if key.op:
        (y,) = g.splice(torch_fragment(key), [y])
    return g.model("x", ["batch", key.c_in], y, ["batch", key.c_out])


def _torch_unit_model(key: OpKey, seed: int = 0) -> bytes:
    """An ``op`` key: its exported graph behind producers of its feature-map inputs (other inputs are
    graph inputs), each feature-map output read by a consumer."""
    g = _Builder(seed)
    p = producer_of(key)
    fragment = torch_fragment(key)
    x_types = None
    if p is None:
        names = [f"x{i}" if i else "x" for i in range(len(key.inputs))]
        shapes, ins = [_batched(s) for s in key.inputs], names
        x_types = [vi.type.tensor_type.elem_type for vi in fragment.graph.input]  # ids and masks stay integers
    else:
        names, shapes, ins = _produce_all(g, p)
    ys = g.splice(fragment, list(ins))
    cons = iter(consumers_of(key))
    outs, y_types = [], []
    for y, s, vi, float_out in zip(ys, key.outputs, fragment.graph.output, _float_outputs(key), strict=True):
        consumed = float_out and _maps((s,)) is not None
        outs.append(_consume(g, y, next(cons)) if consumed else y)
        y_types.append(TensorProto.FLOAT if consumed else vi.type.tensor_type.elem_type)
    return g.model(names, shapes, outs, [_batched(s) for s in key.outputs], x_types, y_types)


def _batched(shape: tuple[int, ...]) -> list:
    """A traced shape (batch 1) with its batch axis symbolic; a tensor whose first axis is not 1 (a
    constant the op computes, e.g. ``torch.arange``) has no batch axis."""
    return ["batch", *shape[1:]] if shape and shape[0] == 1 else list(shape)


def _unit_model(key: OpKey, seed: int = 0) -> bytes:
    """The minimal graph of a conv, pooling, elementwise or concat unit (see ``nasprune.graph.units``)."""
    g = _Builder(seed)
    p = producer_of(key)
    if p is None:
        names, shapes = ["x"], [["batch", key.c_in, *([key.h_in] if key.dims == 1 else [key.h_in, key.w_in])]]
        ins = names
    else:
        names, shapes, ins = _produce_all(g, p)
    x = ins[0]
    if key.kind == "conv":
        y = g.conv(x, key.c_in, key.c_out, key.kernel, key.stride, key.groups, key.dims, key.pad, key.dilation)
        y = g.act(y, key.activation)
        if key.residual == "add":
            y = g.act(g.node("Add", [y, ins[1]]), key.post)
        if key.op:
            (y,) = g.splice(torch_fragment(key), [y])
    elif key.kind == "pool":
        axes = np.array([-1] if key.dims == 1 else [-1, -2], np.int64)
        if key.op in ("global_avg", "global_max"):
            op = "ReduceMean" if key.op == "global_avg" else "ReduceMax"
            y = g.node(op, [x, g.const("axes", axes)], keepdims=1)
        else:
            op = "MaxPool" if key.op == "max" else "AveragePool"
            extra = {"ceil_mode": key.ceil} if key.ceil else {}
            y = g.node(op, [x], kernel_shape=[key.kernel] * key.dims, strides=[key.stride] * key.dims,
                       pads=[key.pad] * (2 * key.dims), **extra)  # fmt: skip
    elif key.kind == "eltwise":
        op = key.op.removesuffix("_scalar")
        if op in ("add", "mul", "sub", "div"):
            other = g.const("k", np.array(1.5, np.float32)) if key.op.endswith("_scalar") else ins[1]
            y = g.node(op.capitalize(), [x, other])
        elif op == "batchnorm":
            c = key.c_in
            stats = [g.weight(n, (c,), c) for n in ("scale", "bias", "mean")]
            var = g.const("var", np.ones(c, np.float32))
            y = g.node("BatchNormalization", [x, *stats, var], epsilon=1e-5)
        else:
            y = g.act(x, op)
    elif key.kind == "concat":
        y = g.node("Concat", ins, axis=1)
    else:
        raise ValueError(f"unknown unit kind {key.kind!r}")
    for c in consumers_of(key):
        y = _consume(g, y, c)
    out_shape = ["batch", key.c_out, *([key.h_out] if key.dims == 1 else [key.h_out, key.w_out])]
    return g.model(names, shapes, y, out_shape)


def null_model() -> bytes:
    """The cheapest graph a session can run (one ``Relu`` on one float): the fixed cost of a call."""
    g = _Builder()
    y = g.node("Relu", ["x"])
    return g.model("x", ["batch", 1], y, ["batch", 1])
