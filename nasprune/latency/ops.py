"""Latency keys: what onnxruntime actually runs for a subnet, one typed :class:`OpKey` per fused unit.

``ops_for(space, cfg)`` lists the units of a subnet in execution order. The units are derived from
the model's graph by :mod:`nasprune.graph.units`, after the fusions onnxruntime applies: a conv with
its BatchNorm folded in and its activation fused (and a residual ``Add`` that follows it, with the
activation after the add), a ``Gemm`` with its activation, pooling (global pooling included), an
elementwise op, a concatenation, and any other op as an ``op`` unit of its own, timed by exporting
it alone. No unit rule is written per architecture, and no op is left without a unit.

MACs of a key follow the trace's convention (norms and pooling add none), so
``sum(k.macs for k in ops_for(space, cfg)) == supernet.macs(cfg)``.

:func:`extreme_config` finds the exact minimum or maximum of any additive cost over a whole space
(75M subnets for ``resnet_mnist``) without enumerating it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nasprune.graph.keys import Activation, OpKey, OpKind, Residual
from nasprune.graph.units import exact_extreme, extreme_graph, plan_for
from nasprune.space import GraphSpace, SubnetConfig

__all__ = ["Activation", "OpKey", "OpKind", "Residual", "all_ops", "block_ops", "extreme_config", "macs_of", "ops_for"]

def block_ops(space: GraphSpace, cfg: SubnetConfig) -> list[tuple[str, OpKey]]:
    """``(unit, OpKey)`` for every fused unit of ``cfg`` in execution order; a unit is named after its
    first layer's module path (:mod:`nasprune.graph.units` derives the units from the graph)."""
    return plan_for(space).ops(space, space.parse_config(cfg))


def ops_for(space: GraphSpace, cfg: SubnetConfig) -> list[OpKey]:
    """The fused units that run for ``cfg``, in execution order (the latency and MAC routine)."""
    return [key for _, key in block_ops(space, cfg)]


def macs_of(ops: Iterable[OpKey]) -> int:
    return sum(k.macs for k in ops)


def all_ops(space: GraphSpace) -> list[OpKey]:
    """Every distinct key reachable in ``space`` (sorted), without enumerating its subnets."""
    return plan_for(space).all_keys(space)


# -- extremes over a space ----------------------------------------------------------------------------

Vec = tuple[float, ...]


def extreme_config(
    space: GraphSpace,
    cost: Callable[[OpKey], float | Vec],
    pick: Callable = min,
    score: Callable[[Vec], float] | None = None,
) -> tuple[SubnetConfig, float]:
    """The config minimising (``pick=min``) or maximising (``max``) the score of the summed unit costs.

    ``cost(key)`` is a number or a vector; vectors are summed per component and ranked by ``score``,
    which must not decrease when any component grows (default: the single component). Exact, by
    variable elimination over the space's choices (:func:`nasprune.graph.units.exact_extreme`); for a
    graph too densely connected for that, a coordinate descent (:func:`~nasprune.graph.units.extreme_graph`)
    whose distance from the optimum :func:`~nasprune.graph.units.bound_graph` bounds. Returns the
    config and its score.
    """
    if pick not in (min, max):
        raise ValueError("pick must be min or max")
    vec = _as_vec(cost)
    score = score or (lambda v: v[0])
    exact = exact_extreme(space, plan_for(space), vec, pick, score)
    if exact is not None:
        return exact

    def total(cfg: SubnetConfig) -> float:
        return score(tuple(sum(c) for c in zip(*(vec(k) for k in ops_for(space, cfg)), strict=True)))

    return extreme_graph(space, plan_for(space), total, pick)


def _as_vec(cost: Callable[[OpKey], float | Vec]) -> Callable[[OpKey], Vec]:
    memo: dict[OpKey, Vec] = {}

    def vec(key: OpKey) -> Vec:
        if key not in memo:
            v = cost(key)
            memo[key] = tuple(float(x) for x in v) if isinstance(v, tuple | list) else (float(v),)
        return memo[key]

    return vec
