"""Latency keys: what onnxruntime actually runs for a subnet, one typed :class:`OpKey` per fused unit.

``ops_for(space, cfg)`` reads the one shape trace (``family.trace``) and groups its layers by
``LayerShape.block`` into the units that onnxruntime executes after graph optimisation:

- the ResNet stem is one ``Conv`` with the BatchNorm folded in and the ReLU fused (``conv``);
- a residual block is one unit (``residual_block``): conv1+ReLU, conv2 with the residual ``Add``
  and the final ReLU fused in, plus the 1x1 projection shortcut when the block has one. In the
  NCHWc layout onnxruntime uses on x86 these are three kernels with no layout change in between;
- an MLP hidden layer is ``Gemm`` + ReLU (``FusedGemm``; the BatchNorm folds into the Gemm bias);
- the head is ``Gemm`` (``linear``), preceded in a CNN by the global average pool and the reshape
  (``pool_linear``, whose key carries the pooled feature map's size).

MACs of a key follow the trace's convention (norms and pooling add none), so
``sum(k.macs for k in ops_for(space, cfg)) == supernet.macs(cfg)``.

:func:`extreme_config` finds the exact minimum or maximum of any additive cost over a whole space
(3.2M subnets for ``resnet_mnist``) by dynamic programming, reading unit keys from ``ops_for``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from nasprune.errors import LatencyTableError
from nasprune.models.base import LayerShape
from nasprune.space import GraphSpace, MLPSpace, ResNetSpace, SubnetConfig

OpKind = Literal["conv", "residual_block", "linear", "pool_linear", "pool", "eltwise", "concat"]
Activation = Literal["relu", "none", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "leaky_relu"]
Residual = Literal["none", "identity", "projection", "add"]


@dataclass(frozen=True, order=True)
class OpKey:
    """One fused unit of the executed graph at a fixed input size (batch size lives in the device).

    ``mid`` is the inner width of a residual block (0 for other kinds); ``residual`` says whether
    the unit adds its input (``identity``) or a 1x1 projection of it (``projection``).

    Units of graph-derived spaces (``nasprune.graph.units``) also use: ``residual="add"`` (a conv
    whose output is added to another tensor of its shape, then ``post`` applied), ``dims`` (1 for
    Conv1d: ``h_in`` is the length, ``w_in`` 1), explicit ``padding`` (-1: ``kernel // 2``),
    ``dilation``, ``groups == c_in == c_out`` for depthwise convs, and the kinds ``pool``
    (``op`` max|avg|global_avg|global_max), ``eltwise`` (``op`` add|mul|an activation; ``mid`` 1 when
    the second operand broadcasts over space) and ``concat`` (``mid`` inputs). ``graph_input`` is 1
    for a unit that reads the network's input (it is then timed without a producer in front).
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

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding < 0 else self.padding

    def _out(self, size: int) -> int:
        if self.kind == "pool" and self.op.startswith("global"):
            return 1
        if self.kind not in ("conv", "residual_block", "pool"):
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
        if self.kind in ("eltwise", "concat"):
            return self.h_in > 1 or self.w_in > 1 or self.dims == 1
        return self.kind in ("conv", "residual_block", "pool")

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1 (same convention as ``LayerShape.macs``)."""
        hw = self.h_out * self.w_out
        k2 = self.kernel**self.dims
        if self.kind in ("pool", "eltwise", "concat"):
            return 0
        if self.kind == "conv":
            return self.c_in // self.groups * self.c_out * k2 * hw
        if self.kind == "residual_block":
            macs = (self.c_in * self.mid + self.mid * self.c_out) * k2 * hw
            return macs + (self.c_in * self.c_out * hw if self.residual == "projection" else 0)
        return self.c_in * self.c_out

    @property
    def weights(self) -> int:
        """Float weights of the deployed unit (BatchNorm folded into biases): the bytes it streams / 4."""
        k2 = self.kernel**self.dims
        if self.kind in ("pool", "eltwise", "concat"):
            return 0
        if self.kind == "conv":
            return self.c_in // self.groups * self.c_out * k2 + self.c_out
        if self.kind == "residual_block":
            n = self.c_in * self.mid * k2 + self.mid + self.mid * self.c_out * k2 + self.c_out
            return n + (self.c_in * self.c_out + self.c_out if self.residual == "projection" else 0)
        return self.c_in * self.c_out + self.c_out

    def describe(self) -> str:
        """A short human-readable form for messages and the CLI (not an identifier)."""
        if self.kind == "residual_block":
            return (
                f"residual_block(c_in={self.c_in}, mid={self.mid}, c_out={self.c_out}, k={self.kernel}, "
                f"stride={self.stride}, in={self.h_in}x{self.w_in}, shortcut={self.residual})"
            )
        if self.kind == "conv":
            size = f"{self.h_in}" if self.dims == 1 else f"{self.h_in}x{self.w_in}"
            add = f", + add, post={self.post}" if self.residual == "add" else ""
            return (
                f"conv{'1d' if self.dims == 1 else ''}(c_in={self.c_in}, c_out={self.c_out}, k={self.kernel}, "
                f"stride={self.stride}, groups={self.groups}, in={size}, act={self.activation}{add})"
            )
        if self.kind == "pool_linear":
            return f"pool_linear(c_in={self.c_in}, c_out={self.c_out}, pool={self.h_in}x{self.w_in})"
        size = f"{self.h_in}" if self.dims == 1 else f"{self.h_in}x{self.w_in}"
        if self.kind == "pool":
            return f"pool({self.op}, c={self.c_in}, k={self.kernel}, stride={self.stride}, in={size})"
        if self.kind == "eltwise":
            return f"{self.op}(c={self.c_in}, in={size}{', broadcast' if self.mid else ''})"
        if self.kind == "concat":
            return f"concat(c_out={self.c_out}, inputs={self.mid}, in={size})"
        return f"linear(c_in={self.c_in}, c_out={self.c_out}, act={self.activation})"


# -- grouping the trace into fused units ---------------------------------------------------------------


def _groups(layers: list[LayerShape]) -> list[tuple[str, list[LayerShape]]]:
    out: list[tuple[str, list[LayerShape]]] = []
    for layer in layers:
        if out and out[-1][0] == layer.block:
            out[-1][1].append(layer)
        else:
            out.append((layer.block, [layer]))
    return out


def _compute(group: list[LayerShape]) -> list[LayerShape]:
    return [layer for layer in group if layer.kind != "batchnorm"]


def _resnet_unit(block: str, group: list[LayerShape], prev: LayerShape | None) -> OpKey:
    convs = _compute(group)
    if block == "head":
        (fc,) = convs
        h, w = (prev.h_out, prev.w_out) if prev is not None else (1, 1)
        return OpKey("pool_linear", fc.c_in, fc.c_out, h_in=h, w_in=w)
    if len(convs) == 1:
        (c,) = convs
        return OpKey(
            "conv", c.c_in, c.c_out, kernel=c.kernel, stride=c.stride, h_in=c.h_in, w_in=c.w_in, activation="relu"
        )
    if len(convs) in (2, 3):
        c1, c2 = convs[0], convs[1]
        return OpKey(
            "residual_block",
            c1.c_in,
            c2.c_out,
            mid=c1.c_out,
            kernel=c1.kernel,
            stride=c1.stride,
            h_in=c1.h_in,
            w_in=c1.w_in,
            activation="relu",
            residual="projection" if len(convs) == 3 else "identity",
        )
    raise LatencyTableError(f"resnet block '{block}' has {len(convs)} convolutions; ops.py knows 1 (stem) or 2-3")


def _mlp_unit(block: str, group: list[LayerShape], prev: LayerShape | None) -> OpKey:
    (fc,) = _compute(group)
    return OpKey("linear", fc.c_in, fc.c_out, activation="none" if block == "head" else "relu")


_UNITS: dict[str, Callable[[str, list[LayerShape], LayerShape | None], OpKey]] = {
    "resnet": _resnet_unit,
    "mlp": _mlp_unit,
}


def block_ops(space: ResNetSpace | MLPSpace | GraphSpace, cfg: SubnetConfig) -> list[tuple[str, OpKey]]:
    """``(block, OpKey)`` for every fused unit of ``cfg`` in execution order (for a graph-derived
    space, the unit's name: its first layer's module path)."""
    from nasprune.registry import family_of

    if isinstance(space, GraphSpace):
        from nasprune.graph.units import plan_for

        return plan_for(space).ops(space, space.parse_config(cfg))
    family = family_of(space)
    if family.name not in _UNITS:
        raise LatencyTableError(f"no latency keys for model family '{family.name}' (add a unit rule in ops.py)")
    unit = _UNITS[family.name]
    out = []
    prev: LayerShape | None = None
    for block, group in _groups(family.trace(space, space.parse_config(cfg))):
        out.append((block, unit(block, group, prev)))
        prev = _compute(group)[-1]
    return out


def ops_for(space: ResNetSpace | MLPSpace, cfg: SubnetConfig) -> list[OpKey]:
    """The fused units that run for ``cfg``, in execution order (the latency and MAC routine)."""
    return [key for _, key in block_ops(space, cfg)]


def macs_of(ops: Iterable[OpKey]) -> int:
    return sum(k.macs for k in ops)


def all_ops(space: ResNetSpace | MLPSpace | GraphSpace) -> list[OpKey]:
    """Every distinct key reachable in ``space`` (sorted), without enumerating its subnets."""
    if isinstance(space, GraphSpace):
        from nasprune.graph.units import plan_for

        return plan_for(space).all_keys(space)
    keys: set[OpKey] = set()
    for _, probe in _probes(space):
        keys.update(ops_for(space, probe))
    return sorted(keys)


# -- exact extremes over a space ----------------------------------------------------------------------
#
# A subnet's cost is a sum over its units, and a unit depends only on the width entering it and on its
# own widths. So the extremes follow from a dynamic programme over the stream width between units, with
# unit keys read from ops_for on probe configs (never rebuilt by hand). Costs may be vectors (e.g. time
# and weight count) combined by a monotone ``score``; each state then keeps its Pareto front.

Vec = tuple[float, ...]
_Front = list[tuple[Vec, tuple]]  # (cost vector, ((name, value), ...) choices)


def extreme_config(
    space: ResNetSpace | MLPSpace,
    cost: Callable[[OpKey], float | Vec],
    pick: Callable = min,
    score: Callable[[Vec], float] | None = None,
) -> tuple[SubnetConfig, float]:
    """The config minimising (``pick=min``) or maximising (``max``) the score of the summed unit costs.

    ``cost(key)`` is a number or a vector; vectors are summed per component and ranked by ``score``,
    which must not decrease when any component grows (default: the single component). Exact over the
    whole space, without enumerating it. Returns the config and its score.
    """
    if pick not in (min, max):
        raise ValueError("pick must be min or max")
    vec = _as_vec(cost)
    score = score or (lambda v: v[0])
    if isinstance(space, GraphSpace):
        from nasprune.graph.units import extreme_graph, plan_for

        def total(cfg: SubnetConfig) -> float:
            return score(tuple(sum(c) for c in zip(*(vec(k) for k in ops_for(space, cfg)), strict=True)))

        return extreme_graph(space, plan_for(space), total, pick)
    sign = 1.0 if pick is min else -1.0
    front = _resnet_front(space, vec, sign) if isinstance(space, ResNetSpace) else _mlp_front(space, vec, sign)
    _, choices = pick(front, key=lambda p: score(p[0]))
    depths = {k[len("depth:") :]: v for k, v in choices if k.startswith("depth:")}
    widths = {k: v for k, v in choices if not k.startswith("depth:")}
    cfg = space.config(depths, widths)
    total = [sum(c) for c in zip(*(vec(k) for k in ops_for(space, cfg)), strict=True)]
    return cfg, score(tuple(total))


def _as_vec(cost: Callable[[OpKey], float | Vec]) -> Callable[[OpKey], Vec]:
    memo: dict[OpKey, Vec] = {}

    def vec(key: OpKey) -> Vec:
        if key not in memo:
            v = cost(key)
            memo[key] = tuple(float(x) for x in v) if isinstance(v, tuple | list) else (float(v),)
        return memo[key]

    return vec


def _add(a: Vec, b: Vec) -> Vec:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _prune(points: _Front, sign: float) -> _Front:
    """The Pareto front: points no other point beats in every component (smaller for min, larger for max)."""
    ordered = sorted(points, key=lambda p: tuple(sign * x for x in p[0]))
    kept: _Front = []
    for v, c in ordered:
        sv = [sign * x for x in v]
        if not any(all(sign * k <= x for k, x in zip(kv, sv, strict=True)) for kv, _ in kept):
            kept.append((v, c))
    return kept


def _combine(a: _Front, b: _Front, sign: float) -> _Front:
    return _prune([(_add(va, vb), ca + cb) for va, ca in a for vb, cb in b], sign)


def _resnet_front(space: ResNetSpace, vec, sign: float) -> _Front:
    deep = {s: max(c) for s, c in space.depth_choices().items()}
    states: dict[int, _Front] = {}
    for s in space.stem_widths:
        stem = dict(block_ops(space, _probe(space, deep, {"stem": s})))["stem"]
        states[s] = [(vec(stem), (("stem", s),))]
    for i, st in enumerate(space.stages):
        prev_name = "stem" if i == 0 else f"stage{i - 1}.out"
        nxt: dict[int, _Front] = {}
        for out in st.out_widths:
            points: _Front = []
            for c_prev, front in states.items():
                per_block: list[_Front] = [[] for _ in range(max(st.depths))]
                for mid in st.mid_widths:
                    mids = {f"stage{i}.block{j}.mid": mid for j in range(max(st.depths))}
                    widths = {prev_name: c_prev, f"stage{i}.out": out, **mids}
                    ops = dict(block_ops(space, _probe(space, deep, widths)))
                    for j, options in enumerate(per_block):
                        options.append((vec(ops[f"stages.{i}.blocks.{j}"]), ((f"stage{i}.block{j}.mid", mid),)))
                stage: _Front = [(tuple(0.0 for _ in front[0][0]), ())]
                for j in range(max(st.depths)):
                    stage = _combine(stage, _prune(per_block[j], sign), sign)
                    if j + 1 in st.depths:
                        tag = ((f"depth:stage{i}", j + 1), (f"stage{i}.out", out))
                        points += _combine(front, [(v, c + tag) for v, c in stage], sign)
            nxt[out] = _prune(points, sign)
        states = nxt
    last = f"stage{len(space.stages) - 1}.out"
    finals: _Front = []
    for c, front in states.items():
        head = dict(block_ops(space, _probe(space, deep, {last: c})))["head"]
        finals += [(_add(v, vec(head)), ch) for v, ch in front]
    return _prune(finals, sign)


def _mlp_front(space: MLPSpace, vec, sign: float) -> _Front:
    layers = space.width_layers()
    unit: dict[tuple, Vec] = {}
    head: dict[int, Vec] = {}
    for tag, probe in _probes(space):
        ops = dict(block_ops(space, probe))
        if tag[0] == "head":
            head[tag[1]] = vec(ops["head"])
        else:
            name, c_prev, w = tag
            i, j = _stage_layer(name)
            unit[(name, c_prev, w)] = vec(ops[f"stages.{i}.blocks.{j}"])
    zero = tuple(0.0 for _ in next(iter(head.values())))
    states: dict[int, _Front] = {space.input_shape[0]: [(zero, ())]}
    for i, st in enumerate(space.stages):
        ends: dict[int, _Front] = {}
        cur = states
        for j in range(max(st.depths)):
            name = f"stage{i}.layer{j}"
            nxt: dict[int, _Front] = {}
            for w in layers[name]:
                points = [(_add(v, unit[(name, c, w)]), (*ch, (name, w))) for c, fr in cur.items() for v, ch in fr]
                nxt[w] = _prune(points, sign)
            cur = nxt
            if j + 1 in st.depths:
                for w, front in cur.items():
                    ends.setdefault(w, []).extend((v, (*ch, (f"depth:stage{i}", j + 1))) for v, ch in front)
        states = {w: _prune(front, sign) for w, front in ends.items()}
    return _prune([(_add(v, head[c]), ch) for c, front in states.items() for v, ch in front], sign)


def _probe(space, depths: dict[str, int], widths: dict[str, int]) -> SubnetConfig:
    base = {layer: min(c) for layer, c in space.width_layers().items()}
    return space.config(depths, {**base, **widths})


def _probes(space) -> Iterable[tuple[tuple, SubnetConfig]]:
    """Configs that together reach every key, each tagged with what it probes."""
    deep = {s: max(c) for s, c in space.depth_choices().items()}
    layers = space.width_layers()
    if isinstance(space, ResNetSpace):
        for i, st in enumerate(space.stages):
            prev_name = "stem" if i == 0 else f"stage{i - 1}.out"
            for c_prev in layers[prev_name]:
                for out in st.out_widths:
                    for mid in st.mid_widths:
                        mids = {f"stage{i}.block{j}.mid": mid for j in range(max(st.depths))}
                        widths = {prev_name: c_prev, f"stage{i}.out": out, **mids}
                        yield (i, c_prev, out, mid), _probe(space, deep, widths)
        last = f"stage{len(space.stages) - 1}.out"
        for c in layers[last]:
            yield ("head", c), _probe(space, deep, {last: c})
    else:
        names = list(layers)
        for k, name in enumerate(names):
            prevs = [space.input_shape[0]] if k == 0 else layers[names[k - 1]]
            for c_prev in prevs:
                for w in layers[name]:
                    widths = {name: w} if k == 0 else {names[k - 1]: c_prev, name: w}
                    yield (name, c_prev, w), _probe(space, deep, widths)
        # every stage has depth >= 1 and its layers share their width choices, so the layer before
        # the head takes the widths of the last layer
        for w in layers[names[-1]]:
            yield ("head", w), _probe(space, deep, {names[-1]: w})


def _stage_layer(name: str) -> tuple[int, int]:
    stage, layer = name.split(".")
    return int(stage[len("stage") :]), int(layer[len("layer") :])
