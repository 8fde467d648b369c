"""Minimal ONNX graphs, one per :class:`~nasprune.latency.ops.OpKey`, in the form the exporter writes.

``nasprune.export`` (torch dynamo, ``optimize=True``) writes BatchNorm folded into the preceding
``Conv``/``Gemm`` as a bias, ``Relu`` as its own node, the residual as ``Add`` and the CNN head as
``ReduceMean`` (axes ``[-1, -2]``, keepdims) + ``Reshape`` + ``Gemm`` (``transB=1``). The graphs
here use the same nodes, opset and a symbolic batch axis, so onnxruntime applies the same fusions
(Conv+ReLU, Conv+Add+ReLU, Gemm+ReLU, NCHWc layout) to both. Units that read a feature map are
built behind a :class:`Producer`, so their input arrives as it does inside a network. Weights are
random: values do not change the latency of dense kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nasprune.latency.ops import OpKey

OPSET = 18
IR_VERSION = 10


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
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

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, groups: int = 1) -> str:
        w = self.weight("w", (c_out, c_in // groups, k, k), c_in // groups * k * k)
        b = self.weight("b", (c_out,), c_out)
        p = k // 2
        return self.node(
            "Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p], group=groups
        )

    def gemm(self, x: str, c_in: int, c_out: int) -> str:
        w = self.weight("w", (c_out, c_in), c_in)
        b = self.weight("b", (c_out,), c_out)
        return self.node("Gemm", [x, w, b], transB=1)

    def model(self, x: str, x_shape: list, y: str, y_shape: list) -> bytes:
        graph = helper.make_graph(
            self.nodes,
            "op",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nasprune")
        model.ir_version = IR_VERSION
        return model.SerializeToString()


@dataclass(frozen=True, order=True)
class Producer:
    """A 1x1 Conv+ReLU writing a ``c`` x ``h`` x ``w`` feature map: what feeds a unit inside a network.

    A unit that reads a feature map is timed behind one, so onnxruntime lays out and fuses it as it
    would mid-network (e.g. the residual ``Add`` fuses into the conv only when its input comes from an
    NCHWc conv, never from a graph input); the producer's own time is measured alone and subtracted.
    """

    c: int
    h: int
    w: int


def producer_of(key: OpKey) -> Producer | None:
    """The producer a key is timed behind (None: the key reads the graph input, as in a network)."""
    if key.kind == "residual_block" or key.kind == "pool_linear":
        return Producer(key.c_in, key.h_in, key.w_in)
    return None


def _produce(g: _Builder, x: str, p: Producer) -> str:
    return g.node("Relu", [g.conv(x, p.c, p.c, 1, 1)])


def producer_model(p: Producer, seed: int = 1) -> bytes:
    """The producer alone (its time is subtracted from the units timed behind it)."""
    g = _Builder(seed)
    y = _produce(g, "x", p)
    return g.model("x", ["batch", p.c, p.h, p.w], y, ["batch", p.c, p.h, p.w])


def op_model(key: OpKey, seed: int = 0) -> bytes:
    """The serialised ONNX model running ``key`` (behind its producer, if it has one).

    Input ``x``, output ``y``, symbolic batch axis ``batch``.
    """
    g = _Builder(seed)
    p = producer_of(key)
    x = _produce(g, "x", p) if p is not None else "x"
    if key.kind == "conv":
        y = g.conv(x, key.c_in, key.c_out, key.kernel, key.stride, key.groups)
        if key.activation == "relu":
            y = g.node("Relu", [y])
    elif key.kind == "residual_block":
        h = g.node("Relu", [g.conv(x, key.c_in, key.mid, key.kernel, key.stride)])
        h = g.conv(h, key.mid, key.c_out, key.kernel, 1)
        short = g.conv(x, key.c_in, key.c_out, 1, key.stride) if key.residual == "projection" else x
        y = g.node("Relu", [g.node("Add", [h, short])])
    elif key.kind == "linear":
        y = g.gemm(x, key.c_in, key.c_out)
        if key.activation == "relu":
            y = g.node("Relu", [y])
    elif key.kind == "pool_linear":
        pooled = g.node("ReduceMean", [x, g.const("axes", np.array([-1, -2], np.int64))], keepdims=1)
        flat = g.node("Reshape", [pooled, g.const("shape", np.array([-1, key.c_in], np.int64))], allowzero=1)
        y = g.gemm(flat, key.c_in, key.c_out)
    else:  # pragma: no cover - OpKind is a closed Literal
        raise ValueError(f"unknown op kind {key.kind!r}")
    if key.kind in ("conv", "residual_block", "pool_linear"):
        x_shape = ["batch", key.c_in, key.h_in, key.w_in]
    else:
        x_shape = ["batch", key.c_in]
    y_shape = ["batch", key.c_out, key.h_out, key.w_out] if key.spatial else ["batch", key.c_out]
    return g.model("x", x_shape, y, y_shape)


def null_model() -> bytes:
    """The cheapest graph a session can run (one ``Relu`` on one float): the fixed cost of a call."""
    g = _Builder()
    y = g.node("Relu", ["x"])
    return g.model("x", ["batch", 1], y, ["batch", 1])
