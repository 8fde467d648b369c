"""The units onnxruntime executes for a graph-derived subnet, as latency keys (:class:`OpKey`).

A *unit* is what runs as one kernel after onnxruntime's graph fusions, read generically off the fx
graph: a conv or linear layer with the BatchNorm that folds into it, the activation that fuses into
it (ReLU, ReLU6/Clip, HardSwish, HardSigmoid, ...) and, for a conv without activation, a following
residual ``Add`` (and the activation after it); pooling (a mean over the spatial dims is a global
average pool); element-wise ops that stay on their own (a squeeze-excite multiply, an unfused add or
activation); concatenations. Reshapes, flattens, dropout and identities cost nothing and have no key.
An op the planner does not know has no key: the plan lists it, and asking for latency keys raises
:class:`LatencyTableError` naming it (never a silent zero).

Shapes come from the analysis: spatial sizes are fixed, channel counts follow the config through the
channel layouts, so ``UnitPlan.ops(cfg)`` is a few dictionary look-ups per unit.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasprune.errors import LatencyTableError
from nasprune.graph.analyze import Analysis, Layout
from nasprune.latency.ops import OpKey
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
_FREE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Flatten)
_FREE_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, torch.flatten, torch.reshape, getattr, operator.getitem}
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


def _first(x):
    return x if isinstance(x, int) else x[0]


class UnitPlan:
    """The units of an analysed model and, per config, their latency keys."""

    def __init__(self, analysis: Analysis, blocks: Iterable[str] = ()):
        self.analysis = analysis
        self.blocks = list(blocks)
        self.units: list[UnitSpec] = []
        self.unsupported: list[str] = []
        self._plan()

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
        consumed: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node in consumed or node.op in ("placeholder", "output", "get_attr"):
                continue
            shape = a.node_shapes.get(node.name)
            if shape is None:
                continue
            unit = self._unit(node, consumed)
            if unit is not None:
                self.units.append(unit)

    def _lay(self, node) -> Layout:
        return self.analysis.node_layouts.get(node.name) or ()

    def _unit(self, node: fx.Node, consumed: set) -> UnitSpec | None:
        a = self.analysis
        shape = a.node_shapes[node.name]
        path = str(node.target) if node.op == "call_module" else node.name
        block = self._block_of(node)
        module = self.modules.get(str(node.target)) if node.op == "call_module" else None
        args = [x for x in node.args if isinstance(x, fx.Node)]
        x = args[0] if args else None
        in_shape = a.node_shapes.get(x.name, ()) if x is not None else ()
        use = a.layers.get(path) if node.op == "call_module" else None
        if use is not None and use.kind in ("conv1d", "conv2d", "linear"):
            return self._weighted(node, use, module, consumed, block)
        if module is not None and isinstance(module, _FREE_MODULES):
            return None
        if node.op == "call_function" and node.target in _FREE_FUNCTIONS:
            return None
        if node.op == "call_method" and node.target in _FREE_METHODS:
            return None
        if use is not None and use.kind == "batchnorm":
            return self._elt(path, "batchnorm", node, block)
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
            parts = [p for p in node.args[0] if isinstance(p, fx.Node)]
            return UnitSpec(path, "concat", (self._lay(node),), self._lay(node), tuple(shape[2:]),
                            {"mid": len(parts)}, block)  # fmt: skip
        if (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        ):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = {d % len(in_shape) for d in (dims if isinstance(dims, list | tuple) else [dims])}
            if dims == set(range(2, len(in_shape))):
                return UnitSpec(path, "pool", (self._lay(x),), self._lay(node), tuple(in_shape[2:]),
                                {"op": "global_avg"}, block)  # fmt: skip
        self.unsupported.append(f"{node.name} ({_describe(node, module)})")
        return None

    def _pool(self, node, module, in_shape, shape) -> dict | None:
        target = type(module) if module is not None else node.target
        if target in _ADAPTIVE:  # the exporter writes a global pool even where the input is already 1x1
            kind = _ADAPTIVE[target]
            if all(s == 1 for s in shape[2:]):
                return {"op": f"global_{kind}"}
            return None  # an adaptive pool to another size has no key: the plan lists it as unsupported
        if target in _POOL_MODULES or target in _POOL_FUNCTIONS:
            kind = _POOL_MODULES.get(target) or _POOL_FUNCTIONS.get(target)
            if module is not None:
                k, s, p = module.kernel_size, module.stride, module.padding
                ceil = int(getattr(module, "ceil_mode", False))
                dil = getattr(module, "dilation", 1)
            else:
                k = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
                s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
                p = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
                ceil, dil = int(node.kwargs.get("ceil_mode", False)), node.kwargs.get("dilation", 1)
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

    def _weighted(self, node, use, module, consumed, block) -> UnitSpec:
        fixed: dict = {}
        if node.args and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder":
            fixed["graph_input"] = 1
        cur = node
        nxt = self._only_user(cur)
        norm = self.analysis.layers.get(str(nxt.target)) if nxt is not None and nxt.op == "call_module" else None
        if norm is not None and norm.kind == "batchnorm":
            consumed.add(nxt)
            cur = nxt
        nxt = self._only_user(cur)
        act = self._act(nxt) if nxt is not None else None
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
        if use.kind == "linear":
            return UnitSpec(use.path, "linear", (use.in_layout,), use.out_layout, (), fixed, block)
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        if isinstance(p, str) or len(set(k)) > 1 or len(set(s)) > 1 or len(set(p)) > 1 or len(set(d)) > 1:
            self.unsupported.append(f"{use.path} (conv with non-square kernel, stride, padding or dilation)")
        fixed.update(kernel=k[0], stride=s[0], padding=0 if isinstance(p, str) else p[0], dilation=d[0],
                     dims=1 if use.kind == "conv1d" else 2)  # fmt: skip
        tied = use.depthwise or (
            len(use.in_layout) == 1 and len(use.out_layout) == 1
            and self.analysis.var_root[use.in_layout[0].var] == self.analysis.var_root[use.out_layout[0].var]
        )  # fmt: skip
        if use.depthwise:
            fixed["depthwise"] = True
        return UnitSpec(use.path, "conv", (use.in_layout,), use.out_layout, tuple(use.in_shape[2:]), fixed, block, tied)

    # -- keys ------------------------------------------------------------------------------------------
    def check(self) -> None:
        if self.unsupported:
            raise LatencyTableError(
                f"no latency key for {len(self.unsupported)} op(s) of this model: {', '.join(self.unsupported[:5])} "
                "(the latency table cannot predict them; file an issue with the op)"
            )

    @staticmethod
    def _count(layout: Layout, widths: dict[int, int | None]) -> int:
        return sum((seg.size if widths[seg.var] is None else widths[seg.var]) * seg.repeat for seg in layout)

    def ops(self, space: GraphSpace, cfg: SubnetConfig) -> list[tuple[str, OpKey]]:
        """``(unit name, key)`` for every unit that runs for ``cfg``, in execution order."""
        self.check()
        widths = self.analysis.widths(cfg.widths)
        skipped = space.skipped_blocks(cfg.depths)
        out = []
        for u in self.units:
            if u.block is not None and u.block in skipped:
                continue
            c_in = self._count(u.ins[0], widths)
            c_out = self._count(u.out, widths)
            out.append((u.name, self.key(u, c_in, c_out)))
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
        self.check()
        a = self.analysis
        choices = {var: (space.groups[g].widths if (g := a.var_group.get(root)) in space.groups else (None,))
                   for var, root in a.var_root.items()}  # fmt: skip

        def counts(layout: Layout) -> list[int]:
            opts = [[(seg.size if c is None else c) * seg.repeat for c in choices[seg.var]] for seg in layout]
            return sorted({sum(combo) for combo in itertools.product(*opts)}) if opts else [0]

        out = []
        for u in self.units:
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
    return _plan_cached(space.model, kwargs, shape, space.channel_divisor, space.graph_digest, blocks)


@functools.lru_cache(maxsize=32)
def _plan_cached(model_ref: str, kwargs: tuple, input_shape: tuple, divisor: int, digest: str, blocks: tuple):
    from nasprune.errors import GraphError
    from nasprune.graph.analyze import analyze_model
    from nasprune.graph.models import build_model

    model = build_model(model_ref, dict(kwargs)).eval()
    analysis = analyze_model(model, torch.zeros(1, *input_shape), divisor)
    if analysis.digest != digest:
        raise GraphError(f"the graph of {model_ref} (digest {analysis.digest}) is not the one its space was derived "
                         f"from ({digest}); derive the space again")  # fmt: skip
    return UnitPlan(analysis, blocks)


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
    plan.check()
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
        scope = sorted({*groups_in(u.ins[0]), *groups_in(u.out)})
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
            widths = {var: assign.get(("w", a.group_of(var))) for var in a.var_root}
            key = plan.key(u, plan._count(u.ins[0], widths), plan._count(u.out, widths))
            v = vec(key)
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


def _describe(node: fx.Node, module) -> str:
    if module is not None:
        return type(module).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


__all__ = ["UnitPlan", "UnitSpec", "bound_graph", "exact_extreme", "extreme_graph"]
