"""Widths and depths under a latency budget: a multiple-choice knapsack over the space's choices.

Every channel group picks one of its widths, every sequence of skippable blocks one of its depths; the
value lost by a choice is the estimated loss increase of the channels (blocks) it removes
(:class:`Values`, from :mod:`~nasprune.search.tier0.importance`), and its cost is read from the
latency table. The table's prediction is a sum over executed units plus a correction
(:class:`~nasprune.latency.table.Correction`): each unit's key depends on the widths of the one or
two groups it reads and writes and on whether its block runs, so costs are not separable per group.
They are a sum of small factors over the space's choices (the structure
:func:`nasprune.graph.units.exact_extreme` eliminates for the table's exact minimum), read here off the
unit keys of probe configs (:func:`nasprune.latency.ops.block_ops`), whatever the units are. Then:

1. **Lagrangian relaxation.** For a price ``lam`` the config minimising
   ``loss + lam * latency`` is found *exactly* by min-sum variable elimination over those factors
   (the correction's weight term, ``cache * max(0, W - W0)``, is the one nonlinear part: it is
   linearised as ``cache * W`` when the solution's weights exceed ``W0``, else dropped). ``lam`` is
   bisected to the budget, freely and with each depth pinned to each of its values: points of the
   convex hull of (latency, loss) on both sides of the budget.
2. **Exact repair with ``table.predict``.** A hull point may leave part of the budget unused (or,
   through the linearisation, exceed it): from the best few, while over, the choice that costs least
   loss per millisecond saved steps down; then the choice that saves most loss per millisecond added
   steps up while the prediction fits; then pairs of changes (one up, one down) that fit and lose
   less are taken, best first, until none is left. The least lossy result wins.

Against brute force over ``mlp_digits``' 3,200 subnets (random monotone values, budgets across the
range) 238 of 240 cases came out exact, the worst 34% above the optimum (docs/tier0.md);
``tests/search/test_tier0.py`` repeats it. A graph too dense to eliminate (or to probe within
``max_probes`` configs) gets the repair alone, from the largest config.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from nasprune.errors import BudgetError
from nasprune.latency.ops import block_ops, ops_for
from nasprune.space import GraphSpace, SubnetConfig

Var = tuple[str, str]  # ("w", group) or ("d", sequence)


@dataclass(frozen=True)
class Values:
    """Estimated loss increase of each choice: per group and width, per sequence and depth."""

    groups: dict[str, dict[int, float]]
    sequences: dict[str, dict[int, float]]

    def loss(self, space: GraphSpace, cfg: SubnetConfig) -> float:
        """The estimated loss increase of ``cfg``: removed blocks, and removed channels of the groups that run."""
        total = sum(self.sequences[s][d] for s, d in cfg.depths.items())
        return total + sum(self.groups[g][w] for g, w in cfg.widths.items())


def values_of(space: GraphSpace, importance) -> Values:
    """The loss lost by each choice from per-channel and per-block scores in loss units (``fisher``,
    ``taylor``): a width ``w`` removes the group's channels from ``w`` on (the supernet keeps the first
    ``w``; sort them by the same scores first, :meth:`GraphSupernet.reorder_channels`), a depth ``d``
    removes the sequence's blocks from ``d`` on."""
    if space.sequences and not importance.blocks:
        raise ValueError(f"importance '{importance.kind}' has no block scores in loss units; use fisher or taylor")
    groups = {}
    for g, group in space.groups.items():
        s = importance.channels[g].double()
        groups[g] = {w: float(s[w:].sum()) for w in group.widths}
    sequences = {
        name: {d: float(sum(importance.blocks[b] for b in seq.blocks[d:])) for d in seq.depths}
        for name, seq in space.sequences.items()
    }
    return Values(groups, sequences)


@dataclass
class Choice:
    """The knapsack's answer: the config, its predicted latency and estimated loss, how it was found."""

    config: SubnetConfig
    predicted_ms: float
    loss: float
    budget_ms: float
    lam: float | None
    hull_ms: float | None
    """The relaxation's config's predicted latency (before the exact repair)."""
    steps: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Knapsack:
    """The factor graph of one space and table; :meth:`solve` answers one budget at a time."""

    def __init__(self, space: GraphSpace, table, values: Values, max_work: int = 2_000_000,
                 max_probes: int = 50_000):  # fmt: skip
        self.space, self.table, self.values = space, table, values
        self.max_work = max_work
        self.choices: dict[Var, tuple[int, ...]] = {("w", g): tuple(c) for g, c in space.width_layers().items()}
        self.choices.update({("d", s): tuple(c) for s, c in space.depth_choices().items()})
        where = {b: (s, i) for s, seq in space.sequences.items() for i, b in enumerate(seq.blocks)}
        # per factor: its scope and three arrays over the scope's choices: loss, linear ms, weights
        self.factors: list[tuple[tuple[Var, ...], np.ndarray, np.ndarray, np.ndarray]] = []
        units = self._unit_factors(max_probes)
        self.probes = units is not None
        for scope, lin, wts in units or []:
            self.factors.append((scope, np.zeros_like(lin), lin, wts))
        for g, group in space.groups.items():
            loss = np.array([values.groups[g][w] for w in group.widths])
            if group.within is None:
                self.factors.append(((("w", g),), loss, np.zeros_like(loss), np.zeros_like(loss)))
                continue
            s, i = where[group.within]
            depths = self.choices[("d", s)]
            both = np.array([[lv if d > i else 0.0 for d in depths] for lv in loss])
            scope2 = tuple(sorted([("w", g), ("d", s)]))
            if scope2[0] != ("w", g):
                both = both.T
            self.factors.append((scope2, both, np.zeros_like(both), np.zeros_like(both)))
        self._unary: dict[Var, int] = {}  # a depth's own factor: where relaxed() pins it
        for s, seq in space.sequences.items():
            loss = np.array([values.sequences[s][d] for d in seq.depths])
            self._unary[("d", s)] = len(self.factors)
            self.factors.append(((("d", s),), loss, np.zeros_like(loss), np.zeros_like(loss)))
        self._plan = self._elimination_plan() if self.probes else None

    def _unit_factors(self, max_probes: int):
        """The table's cost as factors over the space's choices, read off the unit keys of probe configs
        (:func:`nasprune.latency.ops.block_ops`): a unit's *scope* is the choices that change its key (or
        skip it) when changed alone from the largest config; each distinct scope's joint choices are then
        probed once. Per factor: (scope, linear ms, weights). None above ``max_probes`` probe configs."""
        c, table = self.table.correction, self.table
        base = {v: max(opts) for v, opts in self.choices.items()}

        def keys(assign: dict[Var, int]) -> dict[tuple[str, int], object]:
            seen: dict[str, int] = {}
            out = {}
            for name, key in block_ops(self.space, self._config(assign)):
                out[(name, seen.get(name, 0))] = key
                seen[name] = seen.get(name, 0) + 1
            return out

        k0 = keys(base)
        scope: dict[tuple[str, int], set[Var]] = {u: set() for u in k0}
        for var, opts in self.choices.items():
            for v in opts:
                if v != base[var]:
                    k = keys({**base, var: v})
                    for u, key in k0.items():
                        if k.get(u) != key:
                            scope[u].add(var)
        by_scope: dict[tuple[Var, ...], list] = {}
        for u, vs in scope.items():
            by_scope.setdefault(tuple(sorted(vs)), []).append(u)
        if sum(math.prod(len(self.choices[v]) for v in sc) for sc in by_scope) > max_probes:
            return None
        factors = []
        for sc, members in by_scope.items():
            shape = tuple(len(self.choices[v]) for v in sc)
            lin, wts = np.zeros(shape), np.zeros(shape)
            for idx in itertools.product(*(range(n) for n in shape)):
                k = keys({**base, **{v: self.choices[v][i] for v, i in zip(sc, idx, strict=True)}})
                for u in members:
                    if (key := k.get(u)) is not None:  # None: its block is skipped
                        lin[idx] += c.scale * table.op_ms(key) + table.adjust_ms(key)
                        wts[idx] += key.weights
            factors.append((sc, lin, wts))
        return factors

    def unit_cost(self, cfg: SubnetConfig) -> tuple[float, float]:
        """The factors' linear latency and weights of ``cfg`` (what :meth:`relaxed` prices)."""
        assign = self._assign(cfg)
        lin = wts = 0.0
        for sc, _loss, li, wi in self.factors:
            idx = tuple(self.choices[v].index(assign[v]) for v in sc)
            lin, wts = lin + float(li[idx]), wts + float(wi[idx])
        return lin, wts

    # -- the relaxation --------------------------------------------------------------------------------
    def _elimination_plan(self):
        """The order of elimination and each step's scopes (the same for every price), or None when a
        step would exceed ``max_work`` joint choices (a densely connected graph: greedy only)."""
        scopes = [f[0] for f in self.factors]
        alive = list(range(len(scopes)))
        remaining = set(self.choices)
        steps, work = [], 0
        while remaining:

            def joint(var, alive=alive):
                union = {x for i in alive if var in scopes[i] for x in scopes[i]}
                return math.prod(len(self.choices[x]) for x in union)

            var = min(sorted(remaining), key=joint)
            touching = [i for i in alive if var in scopes[i]]
            union = tuple(sorted({x for i in touching for x in scopes[i]}))
            work += math.prod(len(self.choices[x]) for x in union)
            if work > self.max_work:
                return None
            new_scope = tuple(x for x in union if x != var)
            scopes.append(new_scope)
            alive = [i for i in alive if i not in touching] + [len(scopes) - 1]
            steps.append((var, touching, union, new_scope))
            remaining.discard(var)
        return steps, alive

    def _expand(self, arr: np.ndarray, scope: tuple[Var, ...], union: tuple[Var, ...]) -> np.ndarray:
        order = sorted(range(len(scope)), key=lambda k: union.index(scope[k]))
        arr = arr.transpose(order) if scope else arr
        present = {scope[k] for k in order}
        return arr.reshape([len(self.choices[v]) if v in present else 1 for v in union])

    def relaxed(self, lam: float, cache_on: bool, pinned: dict[Var, int] | None = None) -> SubnetConfig | None:
        """The config minimising ``loss + lam * latency`` (latency's weight term linear, or dropped), with
        the depths in ``pinned`` held at their values."""
        if self._plan is None:
            return None
        steps, _final = self._plan
        c = self.table.correction
        slope = c.cache_ms_per_mweight / 1e6 if cache_on else 0.0
        tables = [loss + lam * (lin + slope * wts) for _, loss, lin, wts in self.factors]
        for var, value in (pinned or {}).items():
            i = self._unary[var]
            tables[i] = tables[i] + np.where(np.array(self.choices[var]) == value, 0.0, np.inf)
        scopes = [f[0] for f in self.factors]
        trace = []
        for var, touching, union, new_scope in steps:
            total = sum(self._expand(tables[i], scopes[i], union) for i in touching)
            total = np.broadcast_to(total, [len(self.choices[v]) for v in union])
            axis = union.index(var)
            trace.append((var, new_scope, np.argmin(total, axis=axis)))
            tables.append(np.min(total, axis=axis))
            scopes.append(new_scope)
        assign: dict[Var, int] = {}
        for var, scope, arg in reversed(trace):
            assign[var] = int(arg[tuple(assign[x] for x in scope)]) if scope else int(arg)
        return self._config({v: self.choices[v][i] for v, i in assign.items()})

    def _config(self, assign: dict[Var, int]) -> SubnetConfig:
        depths = {s: assign[("d", s)] for s in self.space.depth_choices()}
        widths = {g: assign[("w", g)] for g in self.space.width_layers()}
        return self.space.config(depths, widths)

    # -- one budget ------------------------------------------------------------------------------------
    def solve(self, budget_ms: float, max_seconds: float = 20.0, starts: int = 4) -> Choice:
        """The config with the least estimated loss the table predicts within ``budget_ms`` (see the module
        docstring for how exact that is). Raises :class:`BudgetError` when even the fastest config is over.

        The relaxation is priced once freely and once per pinned value of each depth (a depth is a large,
        discrete step that one price can jump over); the ``starts`` least lossy configs within the budget
        and the nearest ones over it start the exact repair, and the best repaired config wins."""
        t0 = time.perf_counter()
        predict, loss = self.table.predict, lambda cfg: self.values.loss(self.space, cfg)
        largest = self.space.largest()
        if predict(largest) <= budget_ms:
            ms = predict(largest)
            return Choice(largest, ms, loss(largest), budget_ms, 0.0, ms, {}, time.perf_counter() - t0)
        seen: dict[str, tuple[SubnetConfig, float, float | None]] = {}
        if self._plan is not None:
            pins: list[dict[Var, int]] = [{}]
            pins += [{("d", s): d} for s, opts in self.space.depth_choices().items() for d in opts]
            for pinned in pins:
                for cfg, lam in self._bisect(budget_ms, pinned):
                    seen.setdefault(cfg.key(), (cfg, predict(cfg), lam))
        fits = sorted((v for v in seen.values() if v[1] <= budget_ms), key=lambda v: loss(v[0]))[:starts]
        over = sorted((v for v in seen.values() if v[1] > budget_ms), key=lambda v: v[1])[: max(1, starts // 2)]
        best, deadline = None, t0 + max_seconds
        for cfg, ms, lam in [*fits, *over] or [(largest, predict(largest), None)]:
            done, steps = self._repair(cfg, budget_ms, deadline)
            if predict(done) <= budget_ms and (best is None or loss(done) < best[0]):
                best = (loss(done), done, lam, ms, steps)
        if best is None:  # greedy descent got stuck: grow from the fastest config instead
            done, steps = self._repair(self.table.min_config(), budget_ms, deadline + max_seconds)
            if predict(done) <= budget_ms:
                best = (loss(done), done, None, None, steps)
        if best is None:
            raise BudgetError(
                f"latency budget {budget_ms:g} ms is below the fastest subnet of '{self.space.name}' on "
                f"'{self.table.device.name}'; the smallest achievable budget is {self.table.min_latency():.4f} ms"
            )
        lv, cfg, lam, hull_ms, steps = best
        return Choice(cfg, predict(cfg), lv, budget_ms, lam, hull_ms, steps, time.perf_counter() - t0)

    def _bisect(self, budget_ms: float, pinned: dict[Var, int]) -> list[tuple[SubnetConfig, float]]:
        """The relaxation's configs on both sides of the budget as its price is bisected: the cheapest
        price within the budget and the dearest over it."""
        predict, c = self.table.predict, self.table.correction
        span = max(self.table.max_latency() - self.table.min_latency(), 1e-9)
        scale = max(sum(max(v.values()) for v in self.values.groups.values())
                    + sum(max(v.values()) for v in self.values.sequences.values()), 1e-12)  # fmt: skip
        lo, hi = -60.0, 60.0  # log2 of lam / (loss range / latency range)
        inside = outside = None
        for _ in range(48):
            mid = (lo + hi) / 2
            lam = 2.0**mid * scale / span
            cfg = self.relaxed(lam, False, pinned)
            if c.cache_ms_per_mweight and sum(k.weights for k in _ops(self.space, cfg)) > c.cache_free_weights:
                cfg = self.relaxed(lam, True, pinned)
            if predict(cfg) <= budget_ms:
                hi, inside = mid, (cfg, lam)
            else:
                lo, outside = mid, (cfg, lam)
            if hi - lo < 1e-3:
                break
        return [v for v in (inside, outside) if v is not None]

    def _moves(self, cfg: SubnetConfig) -> list[tuple[Var, int]]:
        assign = self._assign(cfg)
        out = []
        for var, options in self.choices.items():
            if var[0] == "w" and var[1] not in cfg.widths:
                continue  # inside a skipped block: its width changes nothing
            out += [(var, v) for v in options if v != assign[var]]
        return out

    def _assign(self, cfg: SubnetConfig) -> dict[Var, int]:
        assign = {("d", s): d for s, d in cfg.depths.items()}
        for g, group in self.space.groups.items():
            assign[("w", g)] = cfg.widths.get(g, max(group.widths))
        return assign

    def _with(self, cfg: SubnetConfig, *changes: tuple[Var, int]) -> SubnetConfig:
        assign = self._assign(cfg)
        for var, v in changes:
            assign[var] = v
        return self._config(assign)

    def _repair(self, cfg: SubnetConfig, budget: float, deadline: float) -> tuple[SubnetConfig, dict[str, int]]:
        predict, loss = self.table.predict, lambda c: self.values.loss(self.space, c)
        steps = {"down": 0, "up": 0, "swap": 0}
        ms, lv = predict(cfg), loss(cfg)
        while ms > budget:  # step down: least loss per millisecond saved
            best = None
            for move in self._moves(cfg):
                cand = self._with(cfg, move)
                m2 = predict(cand)
                if m2 < ms - 1e-12:
                    ratio = (loss(cand) - lv) / (ms - m2)
                    if best is None or ratio < best[0]:
                        best = (ratio, cand, m2)
            if best is None:
                return cfg, steps
            _, cfg, ms = best
            lv = loss(cfg)
            steps["down"] += 1
        while time.perf_counter() < deadline:  # step up: most loss saved per millisecond added, while it fits
            best = None
            for move in self._moves(cfg):
                cand = self._with(cfg, move)
                l2 = loss(cand)
                if l2 >= lv - 1e-15:
                    continue
                m2 = predict(cand)
                if m2 <= budget:
                    ratio = (lv - l2) / max(m2 - ms, 1e-9)
                    if best is None or ratio > best[0]:
                        best = (ratio, cand, m2, l2)
            if best is None:
                break
            _, cfg, ms, lv = best
            steps["up"] += 1
        while time.perf_counter() < deadline:  # pairs: one change up, one down, that fit and lose less
            moves = self._moves(cfg)
            best = None
            for m1, m2 in itertools.combinations(moves, 2):
                if m1[0] == m2[0]:
                    continue
                cand = self._with(cfg, m1, m2)
                l2 = loss(cand)
                if l2 >= lv - 1e-15 or (best is not None and l2 >= best[2]):
                    continue
                p2 = predict(cand)
                if p2 <= budget:
                    best = (cand, p2, l2)
            if best is None:
                break
            cfg, ms, lv = best
            steps["swap"] += 1
        return cfg, steps


def _ops(space: GraphSpace, cfg: SubnetConfig):
    return ops_for(space, cfg)


def uniform_under(space: GraphSpace, table, budget_ms: float) -> SubnetConfig | None:
    """The widest uniform-width subnet the table predicts within ``budget_ms``: at full depth, or at the
    least depth where none fits at full depth (the classic width-multiplier baseline)."""
    fracs = sorted({w / max(c) for c in space.width_layers().values() for w in c}, reverse=True)
    min_depths = {s: min(c) for s, c in space.depth_choices().items()}
    uniforms = [space.uniform(f) for f in fracs]
    uniforms += [space.config(min_depths, u.widths) for u in uniforms]
    return next((u for u in uniforms if table.predict(u) <= budget_ms), None)


__all__ = ["Choice", "Knapsack", "Values", "uniform_under", "values_of"]
