"""Verification on a busy machine: a robust statistic, the load recorded, "unverified" instead of a failure."""

from __future__ import annotations

import pytest

from nasprune.export import read_metadata
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from nasprune.search.verify import RoundTiming, VerifySettings, distrust
from tests.search.conftest import SPACE, assert_verified_or_too_busy


def _ctx(root, job_id, tmp_path):
    return JobContext(
        job_id=job_id, storage_url=f"sqlite:///{tmp_path / 'trials.db'}", output_dir=tmp_path / job_id, data_dir=root
    )


def test_distrust_states_why():
    s = VerifySettings(min_rounds=5, max_spread=0.5)
    quiet = RoundTiming((1.0, 1.02, 1.01, 1.05, 1.0, 1.03))
    assert quiet.best_ms == 1.0 and quiet.spread == pytest.approx(0.015)
    assert distrust([quiet], [(quiet, 1.0), (RoundTiming((2.1, 2.0, 2.05, 2.0, 2.2)), 2.0)], s) == (None, [None])

    few = RoundTiming((1.0, 1.0))
    batch, per = distrust([few], [], s)
    assert batch == per[0] and "only 2 timing round(s)" in batch

    noisy = RoundTiming((1.0, 3.0, 2.5, 2.8, 1.1, 2.9))  # the typical round 2.65x the fastest
    batch, per = distrust([noisy, quiet], [(quiet, 1.0)], s)
    assert batch is None and "spread 165%" in per[0] and per[1] is None
    batch, per = distrust([quiet], [(noisy, 1.0)], s)
    assert "reference subnet" in batch and per == [batch]

    # the references disagree on the machine's speed: 1x and 3x their table times
    batch, per = distrust([quiet], [(quiet, 1.0), (RoundTiming((3.0,) * 6), 1.0)], s)
    assert "1.00x to 3.00x" in batch


def test_untrusted_timing_gives_an_unverified_recommendation_not_a_failure(prepared, budget, tmp_path):
    """Two rounds of one call each (fewer than the five a timing needs, however quiet the machine): nothing can
    be trusted; the job still completes, recommends its most accurate candidate within the predicted budget and
    says why it is unverified."""
    root, _ = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=8, seed=5)
    res = run_job(job, _ctx(root, "busy", tmp_path), verify=VerifySettings(rounds=2, burst=1, warmup=1))
    rec = res.recommended
    assert rec is not None and not rec.verified and rec.measured_latency_ms is None
    assert "only 2 timing round(s)" in rec.unverified_reason
    assert rec.latency_ms <= budget and rec.accuracy == max(c.accuracy for c in res.pareto)
    assert rec.load_avg is not None and len(rec.load_avg) == 3
    meta = read_metadata(tmp_path / "busy" / "model.onnx")
    assert "only 2 timing round(s)" in meta["unverified_reason"] and meta["verified"] == "false"
    assert "measured_latency_ms" not in meta and len(meta["load_avg"].split(",")) == 3


def test_normal_verification_records_statistic_and_load(prepared, budget, tmp_path):
    root, _ = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=8, seed=6)
    res = run_job(job, _ctx(root, "quiet", tmp_path))
    rec = res.recommended
    assert rec is not None
    assert_verified_or_too_busy(rec, budget)  # too busy only when three attempts in a row were
    assert rec.latency_spread is not None and rec.load_avg is not None and len(rec.load_avg) == 3
    meta = read_metadata(tmp_path / "quiet" / "model.onnx")
    assert meta["latency_statistic"] == "minimum of 30 per-round medians"
    assert meta["verified"] == str(rec.verified).lower() and 1 <= int(meta["timing_attempts"]) <= 3
    if rec.verified:
        assert rec.latency_spread <= 0.5 and float(meta["measured_latency_ms"]) == rec.measured_latency_ms


def test_an_untrusted_timing_is_tried_again_then_stated(prepared, budget, tmp_path):
    """No spread is allowed (max_spread 0: every real timing varies): each of the two attempts is
    distrusted, and the recommendation says it was unverified in both."""
    root, _ = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=8, seed=6, verify_top_k=1)
    settings = VerifySettings(rounds=6, burst=3, warmup=2, max_spread=0.0, attempts=2)
    res = run_job(job, _ctx(root, "strict", tmp_path), verify=settings)
    rec = res.recommended
    assert rec is not None and not rec.verified and rec.measured_latency_ms is None
    assert rec.unverified_reason.endswith("(in each of 2 attempts)"), rec.unverified_reason
    assert read_metadata(tmp_path / "strict" / "model.onnx")["timing_attempts"] == "2"
