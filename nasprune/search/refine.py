"""Spend the last trials near the budget: grow the best candidates while the latency table says they fit.

A sampler spreads its trials over the whole front, so the candidate it finds within a budget often
sits well below it (recommendations at 36-54% of the budget were seen), leaving capacity unused. The
refinement phase is a local search on the budget's boundary, in the manner of NetAdapt run upwards:

1. a *parent* is one of the best candidates within the budget (the first few refinement trials take
   the top ones in turn, later ones the best so far, so the search climbs);
2. the parent is shrunk by a step or two at random (a width one choice narrower, a sequence one block
   shallower), except on its first visit;
3. it is then *grown*: one random step at a time (a width one choice wider, or a sequence one block
   deeper with the new block at its narrowest), among the steps whose predicted latency stays within
   the budget, until no step fits. The result is maximal: no single step can widen it further.

Growing asks only the table; each grown subnet costs one accuracy evaluation, like any trial. The
trials are stored like the sampler's (user attribute ``origin: refine``), so a resumed job counts them
and never repeats one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from nasprune.search.optuna_backend import mirror, run_trial
from nasprune.search.study import open_study, quiet_optuna, record_of
from nasprune.space import SubnetConfig

Fits = Callable[[SubnetConfig], bool]


def _steps(space, cfg: SubnetConfig, up: bool) -> list[SubnetConfig]:
    """Every config one step larger (``up``) or smaller than ``cfg``."""
    layers = space.width_layers()
    out = []
    for layer, w in cfg.widths.items():
        choices = layers[layer]
        i = choices.index(w) + (1 if up else -1)
        if 0 <= i < len(choices):
            out.append(space.config(cfg.depths, {**cfg.widths, layer: choices[i]}))
    for seq, choices in space.depth_choices().items():
        i = choices.index(cfg.depths[seq]) + (1 if up else -1)
        if not 0 <= i < len(choices):
            continue
        depths = {**cfg.depths, seq: choices[i]}
        widths = {layer: cfg.widths.get(layer, min(layers[layer])) for layer in space.active_layers(depths)}
        out.append(space.config(depths, widths))
    return out


def grow(space, cfg: SubnetConfig, fits: Fits, rng: random.Random) -> SubnetConfig:
    """``cfg`` grown one random fitting step at a time until no single step fits (``cfg`` if none does)."""
    while True:
        moves = [c for c in _steps(space, cfg, up=True) if fits(c)]
        if not moves:
            return cfg
        cfg = rng.choice(moves)


def shrink(space, cfg: SubnetConfig, n: int, rng: random.Random) -> SubnetConfig:
    """``cfg`` made ``n`` random steps smaller (fewer where it is already the smallest)."""
    for _ in range(n):
        moves = _steps(space, cfg, up=False)
        if not moves:
            break
        cfg = rng.choice(moves)
    return cfg


def propose(
    space,
    ranked: list[SubnetConfig],
    seen: set[str],
    fits: Fits,
    index: int,
    seed: int,
    tries: int = 50,
) -> SubnetConfig | None:
    """The ``index``-th refinement trial's subnet: a grown neighbour of a parent from ``ranked`` (the
    candidates within budget, best first) that no trial has scored yet (keys in ``seen``); None when
    ``tries`` attempts find only subnets already scored. Deterministic in (``seed``, ``index``), so a
    resumed job proposes what the interrupted one would have."""
    if not ranked:
        return None
    rng = random.Random(seed * 100_003 + index)
    top = min(len(ranked), 3)
    for attempt in range(tries):
        if index < top and attempt == 0:
            parent, n_shrink = ranked[index], 0  # first the top candidates themselves, grown as they are
        else:
            parent = ranked[0] if rng.random() < 0.7 else ranked[rng.randrange(top)]
            n_shrink = 1 + attempt // 10 + rng.randrange(2)  # wider jumps when the near ones are all scored
        child = grow(space, shrink(space, parent, n_shrink, rng), fits, rng)
        if child.key() not in seen:
            return child
    return None


def run(objective, job, ctx, on_trial) -> int:
    """Run the job's refinement trials (``job.n_refine()``) after the sampler's, until the study holds
    ``job.n_trials`` complete trials or no unscored grown subnet is found (a small space near its budget);
    returns how many refinement trials the study holds."""
    from optuna.trial import TrialState

    n_refine = job.n_refine()
    if n_refine == 0:
        return 0
    with quiet_optuna():
        durable = open_study(job, ctx.job_id, ctx.storage_url)
        study = mirror(durable, job)
        n_durable = len(durable.get_trials(deepcopy=False))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = sum(t.user_attrs.get("origin") == "refine" for t in complete)
        records = [record_of(t) for t in complete]
        seen = {r.subnet_key for r in records}
        space = objective.space

        def scored(rec) -> None:
            records.append(rec)
            on_trial(rec)

        while len(records) < job.n_trials and done < n_refine and not ctx.should_stop():
            within = sorted((r for r in records if r.feasible), key=lambda r: (-r.accuracy, -r.latency_ms, r.number))
            cfg = propose(space, [space.parse_config(r.config) for r in within], seen, objective.feasible, done,
                          job.seed)  # fmt: skip
            if cfg is None:  # every grown neighbour has been scored: the boundary around the best is explored
                break
            study.enqueue_trial(objective.params_of(cfg))
            run_trial(study, durable, objective, n_durable, scored, attrs={"origin": "refine"})
            n_durable, done = n_durable + 1, done + 1
            seen.add(cfg.key())
    return done
