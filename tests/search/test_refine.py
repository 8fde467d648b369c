"""The refinement phase (nasprune.search.refine): trials spent on the budget's boundary."""

from __future__ import annotations

import random

import optuna
import pytest

from nasprune.search.job import DRIFT_APE, JobContext, SearchJob
from nasprune.search.refine import _steps, grow, propose, shrink
from nasprune.search.runner import run_job
from nasprune.search.study import make_storage
from tests.search.conftest import SPACE


def _maximal(space, cfg, fits) -> bool:
    return fits(cfg) and not any(fits(c) for c in _steps(space, cfg, up=True))


def test_grown_subnets_fit_and_no_single_step_widens_them(prepared, budget):
    _, table = prepared
    space = table.space
    fits = lambda c: table.predict(c) <= budget  # noqa: E731
    rng = random.Random(0)
    for start in (space.smallest(), space.uniform(0.25), space.uniform(0.5)):
        if not fits(start):
            continue
        grown = grow(space, start, fits, rng)
        assert _maximal(space, grown, fits)
        assert table.predict(grown) >= table.predict(start)
        assert all(grown.widths.get(k, 0) >= w for k, w in start.widths.items() if k in grown.widths)
    big = space.largest()
    assert grow(space, big, lambda c: True, rng) == big  # nothing to grow
    small = shrink(space, big, 3, rng)
    assert table.predict(small) < table.predict(big) and small != big
    assert shrink(space, space.smallest(), 2, rng) == space.smallest()
    # deterministic in (seed, index): a resumed job proposes what the interrupted one would have
    ranked = [space.smallest()]
    assert propose(space, ranked, set(), fits, 5, seed=3) == propose(space, ranked, set(), fits, 5, seed=3)
    assert propose(space, [], set(), fits, 0, seed=3) is None


def test_a_job_spends_its_refinement_trials_on_distinct_maximal_subnets(prepared, budget, tmp_path):
    root, table = prepared
    space = table.space
    url = f"sqlite:///{tmp_path / 'trials.db'}"
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=14, refine_trials=6, sampler="random", seed=4,
                    finetune_steps=0)  # fmt: skip
    res = run_job(job, JobContext(job_id="refine", storage_url=url, output_dir=tmp_path / "out", data_dir=root))
    assert res.n_trials == 14
    trials = optuna.load_study(study_name="refine", storage=make_storage(url)).get_trials()
    refined = [t for t in trials if t.user_attrs.get("origin") == "refine"]
    # after the sampler's 8; on this small space the grown neighbourhood of the best can run out of unscored
    # subnets before the 6, and the sampler then runs the rest: the job still runs its 14 trials
    assert 1 <= len(refined) <= 6 and [t.number for t in refined] == list(range(8, 8 + len(refined)))
    keys = [t.user_attrs["subnet_key"] for t in trials]
    assert len(set(keys)) == len(keys)  # none scored twice
    fits = lambda c: table.predict(c) <= budget  # noqa: E731
    for t in refined:
        cfg = space.parse_config(t.user_attrs["config"])
        assert _maximal(space, cfg, fits), t.number
    rec = res.recommended
    shown = rec.measured_latency_ms if rec.measured_latency_ms is not None else rec.latency_ms
    assert res.budget_use == shown / budget and res.model_dump()["budget_use"] == res.budget_use
    assert rec.verified is False or res.budget_use <= 1.0
    # the table checked against this job's own measurements
    measured = [c for c in res.pareto if c.measured_latency_ms is not None]
    err = res.table_error_in_use
    assert (err is None) == (not measured)
    if measured:
        apes = [abs(c.latency_ms - c.measured_latency_ms) / c.measured_latency_ms * 100 for c in measured]
        assert err["n"] == len(measured) and err["max_ape"] == pytest.approx(max(apes), abs=1e-3)
        assert res.model_dump()["table_error_in_use"] == err
    # within DRIFT_APE no advice; a table whose predictions miss the measurements by more says so and how to rebuild
    assert (res.table_drift is None) == (err is None or err["median_ape"] <= DRIFT_APE)
    if measured:
        off = res.model_copy(update={"pareto": [
            c.model_copy(update={"measured_latency_ms": c.latency_ms / 1.25}) if c.measured_latency_ms else c
            for c in res.pareto]})  # fmt: skip
        assert off.table_error_in_use["median_ape"] == pytest.approx(25.0, abs=1e-3)
        assert "25.0% off" in off.table_drift
        assert f"nasprune lut build --space {SPACE} --device local-cpu" in off.table_drift
        assert off.model_dump()["table_drift"] == off.table_drift
