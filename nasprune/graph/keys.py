"""Latency keys: one typed :class:`OpKey` per unit onnxruntime runs after its fusions.

The leaf both sides share: :mod:`nasprune.graph.units` turns a graph into keys, :mod:`nasprune.latency`
times and tables them. :class:`TorchOp` (registered with :func:`register_torch_op`) says how to build, in
torch, an op that only the model's graph knows, so that the latency side can export and time it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Activation", "OpKey", "OpKind", "Residual", "TorchOp", "register_torch_op", "torch_op"]

OpKind = Literal["conv", "linear", "pool", "eltwise", "concat", "op"]
Activation = Literal["relu", "none", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "leaky_relu"]
Residual = Literal["none", "add"]


@dataclass(frozen=True, order=True)
class OpKey:
    """One fused unit of the executed graph at a fixed input size (batch size lives in the device).

    ``residual="add"``: a conv whose output is added to another tensor of its shape, then ``post``
    applied. ``dims``: 1 for Conv1d (``h_in`` is the length, ``w_in`` 1). Explicit ``padding`` (-1: ``kernel // 2``),
    ``dilation``, ``groups == c_in == c_out`` for depthwise convs, and the kinds ``pool``
    (``op`` max|avg|global_avg|global_max), ``eltwise`` (``op`` add|mul|an activation; ``mid`` 1 when
    the second operand broadcasts over space) and ``concat`` (``mid`` inputs). ``graph_input`` is 1
    for a unit that reads the network's input (it is then timed without a producer in front).

    Kind ``op`` is any other op (or short chain of ops) of the graph: ``op`` describes it (the torch
    module or function and its arguments, :mod:`nasprune.graph.units`), ``inputs``/``outputs`` are
    its tensors' shapes without the batch axis, ``sizes`` the active (in, out) channels of the
    model's prunable layers inside it, ``n_macs``/``n_weights`` its MACs and deployed weights. Its
    graph is the op exported by torch alone (:func:`nasprune.latency.graphs.op_model`). A ``conv`` or
    ``linear`` key with a non-empty ``op`` has that op (one tensor in, same shape out) fused behind
    its activation: it is timed with it, whether onnxruntime fuses it into the layer's kernel or not.
    """

    kind: OpKind
    c_in: int
    c_out: int
    mid: int = 0
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    h_in: int = 1
    w_in: int = 1
    activation: Activation = "none"
    residual: Residual = "none"
    dims: int = 2
    padding: int = -1
    dilation: int = 1
    ceil: int = 0
    op: str = ""
    post: Activation = "none"
    graph_input: int = 0
    inputs: tuple[tuple[int, ...], ...] = ()
    outputs: tuple[tuple[int, ...], ...] = ()
    sizes: tuple[int, ...] = ()
    n_macs: int = 0
    n_weights: int = 0

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding < 0 else self.padding

    def _out(self, size: int) -> int:
        if self.kind == "pool" and self.op.startswith("global"):
            return 1
        if self.kind not in ("conv", "pool"):
            return size
        span = self.dilation * (self.kernel - 1) + 1
        num = size + 2 * self.pad - span
        out = (-(-num // self.stride) if self.ceil else num // self.stride) + 1
        if self.ceil and (out - 1) * self.stride >= size + self.pad:  # torch's rule for ceil_mode
            out -= 1
        return out

    @property
    def h_out(self) -> int:
        return self._out(self.h_in) if self.spatial else 1

    @property
    def w_out(self) -> int:
        if self.dims == 1:
            return 1
        return self._out(self.w_in) if self.spatial else 1

    @property
    def spatial(self) -> bool:
        if self.kind == "op":
            return False
        if self.kind in ("eltwise", "concat"):
            return self.h_in > 1 or self.w_in > 1 or self.dims == 1
        return self.kind in ("conv", "pool")

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1 (same convention as ``LayerShape.macs``)."""
        if self.kind == "op":
            return self.n_macs
        hw = self.h_out * self.w_out
        k2 = self.kernel**self.dims
        if self.kind in ("pool", "eltwise", "concat"):
            return 0
        if self.kind == "conv":
            return self.c_in // self.groups * self.c_out * k2 * hw
        return self.c_in * self.c_out

    @property
    def weights(self) -> int:
        """Float weights of the deployed unit (BatchNorm folded into biases): the bytes it streams / 4."""
        if self.kind == "op":
            return self.n_weights
        k2 = self.kernel**self.dims
        if self.kind in ("pool", "eltwise", "concat"):
            return 0
        if self.kind == "conv":
            return self.c_in // self.groups * self.c_out * k2 + self.c_out
        return self.c_in * self.c_out + self.c_out

    def describe(self) -> str:
        """A short human-readable form for messages and the CLI (not an identifier)."""
        then = f", then {_short(self.op)}" if self.op and self.kind in ("conv", "linear") else ""
        if self.kind == "op":
            shapes = lambda ts: ", ".join("x".join(map(str, t)) or "scalar" for t in ts)  # noqa: E731
            return f"op({_short(self.op)}: {shapes(self.inputs)} -> {shapes(self.outputs)})"
        if self.kind == "conv":
            size = f"{self.h_in}" if self.dims == 1 else f"{self.h_in}x{self.w_in}"
            add = f", + add, post={self.post}" if self.residual == "add" else ""
            return (
                f"conv{'1d' if self.dims == 1 else ''}(c_in={self.c_in}, c_out={self.c_out}, k={self.kernel}, "
                f"stride={self.stride}, groups={self.groups}, in={size}, act={self.activation}{add}{then})"
            )
        size = f"{self.h_in}" if self.dims == 1 else f"{self.h_in}x{self.w_in}"
        if self.kind == "pool":
            return f"pool({self.op}, c={self.c_in}, k={self.kernel}, stride={self.stride}, in={size})"
        if self.kind == "eltwise":
            return f"{self.op}(c={self.c_in}, in={size}{', broadcast' if self.mid else ''})"
        if self.kind == "concat":
            return f"concat(c_out={self.c_out}, inputs={self.mid}, in={size})"
        return f"linear(c_in={self.c_in}, c_out={self.c_out}, act={self.activation}{then})"


def _short(op: str, width: int = 60) -> str:
    """An ``op`` key's text as it is if short, else the names of its ops (``AvgPool2d+Conv2d+ELU``)."""
    if len(op) <= width:
        return op
    names = []
    for part in op.split("; "):
        call = part.split("=", 1)[1] if part.startswith("%") and "=" in part else part
        name = call.lstrip("~").split("(", 1)[0].split("[", 1)[0].rsplit(".", 1)[-1]
        if name not in ("getattr", "getitem", "floordiv", "size"):  # sizes read for the op's arguments
            names.append(name)
    return "+".join(names)


# -- ops exported by torch ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TorchOp:
    """How to build, at a key's sizes, the torch module computing an op that has no hand-written graph.

    ``build(key)`` returns a module taking the key's input tensors (``key.inputs``; for a conv or linear
    key's fused op, the layer's output) and computing the op; :func:`nasprune.graph.units.UnitPlan`
    registers one per op it finds (:func:`register_torch_op`), under the key's ``op`` text, which
    names the op, its arguments and how its nodes connect, so equal texts compute the same thing.
    """

    build: Callable[[OpKey], object]
    dtypes: tuple[str, ...] = ()
    """The dtype of each input (``float32``, ``int64``, ``bool``: a token model's ids and masks), one per
    ``key.inputs``; empty: all float32."""
    out_dtypes: tuple[str, ...] = ()
    """The same for each output (``key.outputs``)."""

    @property
    def all_float(self) -> bool:
        return all(d.startswith("float") for d in (*self.dtypes, *self.out_dtypes))


_TORCH_OPS: dict[str, TorchOp] = {}


def register_torch_op(name: str, op: TorchOp) -> None:
    """Make ``op`` the way to build keys whose ``op`` text is ``name`` (kept for the process)."""
    _TORCH_OPS[name] = op


def torch_op(name: str) -> TorchOp | None:
    """The registered way to build keys whose ``op`` text is ``name``, or None."""
    return _TORCH_OPS.get(name)
