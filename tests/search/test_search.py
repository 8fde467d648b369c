"""Search conformance: every backend, one suite, real trials, real onnxruntime measurements."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import onnx
import optuna
import pytest

from nasprune.data import load_dataset
from nasprune.errors import BudgetError
from nasprune.export import read_metadata
from nasprune.latency.timing import make_session
from nasprune.search.backends import BACKENDS as REGISTERED
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.pareto import dominates
from nasprune.search.runner import run_job
from nasprune.search.study import journal_url, load_trials, make_storage
from tests.search.conftest import SPACE, assert_verified_or_too_busy

BACKENDS = list(REGISTERED)  # every registered backend gets the conformance suite


def _ctx(root, job_id, tmp_path, **kw):
    return JobContext(
        job_id=job_id,
        storage_url=f"sqlite:///{tmp_path / 'trials.db'}",
        output_dir=tmp_path / job_id,
        data_dir=root,
        **kw,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_conformance(backend, prepared, budget, tmp_path):
    root, table = prepared
    # 3 seeds (feasible by construction) + 13 sampled: some infeasible (see the budget fixture); then 4 grown
    # towards the budget (nasprune.search.refine, feasible by construction)
    n = 20
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=n, backend=backend, seed=1, refine_trials=4)
    stages = []
    res = run_job(job, _ctx(root, f"conf-{backend}", tmp_path, on_progress=lambda p: stages.append(p.stage)))

    assert res.n_trials == n
    trials = load_trials(f"sqlite:///{tmp_path / 'trials.db'}", f"conf-{backend}")
    assert len(trials) == n and len({t.number for t in trials}) == n
    assert {"accuracy", "latency_ms", "params", "macs", "feasible", "config", "subnet_key"} <= set(
        trials[0].model_dump()
    )
    assert any(not t.feasible for t in trials) and any(t.feasible for t in trials)
    for t in trials:
        assert t.feasible == (t.latency_ms <= budget)
        assert t.latency_ms == pytest.approx(table.predict(table.space.parse_config(t.config)))

    # the front as searched (the delivered candidate's accuracy may have risen by fine-tuning since)
    front = [(c.inherited_accuracy if c.delivered else c.accuracy, c.latency_ms) for c in res.pareto]
    assert front and all(c.feasible and c.latency_ms <= budget for c in res.pareto)
    assert not any(dominates(a, b) for a in front for b in front if a != b)
    # every feasible trial is dominated by (or equal to) a front member
    for t in trials:
        if t.feasible:
            assert any(dominates(f, (t.accuracy, t.latency_ms)) or f == (t.accuracy, t.latency_ms) for f in front)

    rec = res.recommended
    assert rec is not None
    assert_verified_or_too_busy(rec, budget)
    # robust selection: the first verified candidate in the selection order, which follows the paired
    # comparison on the validation images (ties by validation loss), and every candidate carries its
    # accuracy's uncertainty
    assert sorted(c.selection_rank for c in res.pareto) == list(range(len(res.pareto)))
    eligible = [c for c in res.pareto if c.verified or (c.unverified_reason and c.latency_ms <= budget)]
    # the first finetune_top_k eligible candidates were fine-tuned; the most accurate of them is delivered,
    # or a slower one that validation cannot tell from it (largest-tied: tests/search/test_select.py)
    tuned = sorted((c for c in res.pareto if c.finetuned_accuracy is not None), key=lambda c: c.selection_rank)
    assert 1 <= len(tuned) <= job.finetune_top_k and rec in tuned
    assert [c.selection_rank for c in tuned] == sorted(c.selection_rank for c in eligible)[: len(tuned)]
    top = max(tuned, key=lambda c: (c.accuracy, c.measured_latency_ms or c.latency_ms))
    assert rec is top or (rec.measured_latency_ms or rec.latency_ms) > (top.measured_latency_ms or top.latency_ms)
    steps = job.finetune_plan(len(load_dataset("digits").tensors("train")[1]), 64)
    assert all(c.finetune_steps == steps for c in tuned) and steps == 500  # digits: the 500-step floor
    first = min(res.pareto, key=lambda c: c.selection_rank)
    assert first.tied_with_best and (first.p_worse_than_best is None or first.p_worse_than_best >= 0.05)
    n_val = len(load_dataset("digits").tensors("val")[1])
    for c in res.pareto:
        searched = c.inherited_accuracy if c.delivered else c.accuracy
        lo, hi = c.accuracy_ci95
        assert lo <= searched <= hi and c.val_loss > 0
        assert c.accuracy_se == pytest.approx((searched * (1 - searched) / n_val) ** 0.5, abs=1e-6)
    out = tmp_path / f"conf-{backend}"
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    meta = read_metadata(out / "model.onnx")  # the delivered model: inherited or fine-tuned weights
    assert meta["subnet_key"] == rec.candidate_id and meta["verified"] == str(rec.verified).lower()
    if rec.verified:  # measured at the table's machine speed: the raw median over the speed of the table's subnets
        assert float(meta["measured_latency_ms"]) == rec.measured_latency_ms
        assert rec.machine_speed is not None and 0.2 < rec.machine_speed < 5
        assert float(meta["measured_raw_ms"]) == pytest.approx(rec.measured_latency_ms * rec.machine_speed)
    else:  # too busy to trust (assert_verified_or_too_busy above): the reason travels with the model
        assert meta["unverified_reason"] == rec.unverified_reason and "measured_latency_ms" not in meta
    assert json.loads((out / "pareto.json").read_text())["recommended"]["candidate_id"] == rec.candidate_id
    # the delivered file is the model that scored the reported accuracy: inherited (BN recalibrated) or,
    # when fine-tuning alone scored at least as well on the same split, fine-tuned
    assert meta["delivered"] == rec.delivered and int(meta["finetune_steps"]) == rec.finetune_steps
    assert int(meta["finetuned_candidates"]) == len(tuned)
    assert rec.finetuned_accuracy is not None and rec.inherited_accuracy is not None
    assert rec.accuracy == max(rec.inherited_accuracy, rec.finetuned_accuracy)  # the better one is delivered
    assert rec.test_accuracy == (rec.finetuned_test_accuracy if rec.delivered == "fine-tuned"
                                 else rec.inherited_test_accuracy)  # fmt: skip
    x, y = load_dataset("digits").tensors("val")
    (logits,) = make_session(out / "model.onnx").run(None, {"input": x.numpy()})
    assert abs((logits.argmax(1) == y.numpy()).mean() - rec.accuracy) <= 0.005
    assert (out / "pareto.png").stat().st_size > 5000
    assert stages[0] == "building latency table" and "searching" in stages and stages[-1] == "done"


def test_impossible_budget_is_refused_with_the_minimum(prepared, tmp_path):
    root, table = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=table.min_latency() * 0.5, n_trials=5)
    lo, hi = table.min_latency(), table.max_latency()  # the achievable range, said at once
    said = rf"smallest achievable budget is {lo:.4f} ms \(budgets from {lo:.4f} to {hi:.4f} ms"
    with pytest.raises(BudgetError, match=said):
        run_job(job, _ctx(root, "impossible", tmp_path))
    study_names = (
        [s.study_name for s in optuna.get_all_study_summaries(make_storage(f"sqlite:///{tmp_path / 'trials.db'}"))]
        if (tmp_path / "trials.db").exists()
        else []
    )
    assert "impossible" not in study_names  # refused before any trial


@pytest.mark.parametrize("storage_kind", ["journal", "sqlite", "postgresql"])
def test_resume_after_sigkill_loses_and_repeats_nothing(storage_kind, prepared, budget, tmp_path, request):
    """A real `nasprune search` process is SIGKILLed mid-run and rerun: exactly N trials, none lost or repeated,
    on every kind of trial storage (the journal file is the one-machine default, PostgreSQL the shared one)."""
    root, _ = prepared
    storage = {
        "journal": lambda: journal_url(tmp_path / "trials.journal"),
        "sqlite": lambda: f"sqlite:///{tmp_path / 'trials.db'}",
        "postgresql": lambda: request.getfixturevalue("pg_server").create_database(),
    }[storage_kind]()
    n = 40  # killed after 10: most of the job is still ahead (TPE trials take tens of ms each)
    cmd = [
        sys.executable,
        "-m",
        "nasprune",
        "search",
        "--space",
        SPACE,
        "--budget-ms",
        str(budget),
        "--trials",
        str(n),
        "--sampler",
        "tpe",
        "--job-id",
        "killme",
        "--storage",
        storage,
        "--data-dir",
        str(root),
        "--output-dir",
        str(tmp_path / "out"),
        # trials are what this test is about: no MLflow store, no fine-tuning of the delivered model
        "--tracking-uri",
        "none",
        "--finetune-steps",
        "0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(load_trials(storage, "killme")) < 10:
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    before = load_trials(storage, "killme")
    assert 10 <= len(before) < n, "the search must be killed mid-run"

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    after = load_trials(storage, "killme")
    assert len(after) == n and len({t.number for t in after}) == n
    kept = {t.number: t for t in after}
    for t in before:  # finished trials survived unchanged
        assert kept[t.number] == t
    states = [t.state for t in optuna.load_study(study_name="killme", storage=make_storage(storage)).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == n


def test_an_impossible_budget_is_refused_before_any_training(prepared, tmp_path):
    """The budget is checked against the table before the supernet: a data dir with a table and no
    trained supernet refuses at once, and trains nothing."""
    from nasprune.latency import table_path

    _, table = prepared
    fresh = tmp_path / "fresh"
    table.save(table_path(SPACE, "local-cpu", fresh))
    stages = []
    job = SearchJob(space=SPACE, latency_budget_ms=table.min_latency() * 0.5, n_trials=5)
    with pytest.raises(BudgetError, match="smallest achievable budget"):
        run_job(job, _ctx(fresh, "early", tmp_path, on_progress=lambda p: stages.append(p.stage)))
    assert stages == ["building latency table"]
    assert not list(fresh.rglob("*.pt"))


def test_machine_speed_is_the_median_ratio_of_reference_times():
    from nasprune.search.runner import machine_speed

    assert machine_speed([1.2, 2.4, 3.0], [1.0, 2.0, 2.0]) == pytest.approx(1.2)  # median of 1.2, 1.2, 1.5
    assert machine_speed([], []) == 1.0  # no references (a table without held-out subnets)
    assert machine_speed([0.0, 0.5], [1.0, 0.5]) == pytest.approx(1.0)  # a failed timing is ignored


def test_fine_tuning_the_winner_recovers_accuracy_and_can_be_turned_off(prepared, budget, tmp_path):
    """An under-trained supernet (one epoch at a low learning rate: about 80% on validation): the
    largest subnet fine-tuned alone for 3 epochs with distillation scores better than on inherited
    weights (about 93-95%, seeds 0 and 1), and a job can turn fine-tuning off."""
    from nasprune.finetune import finetune_subnet
    from nasprune.registry import load_space
    from nasprune.train import TrainConfig, train_supernet

    ds = load_dataset("digits")
    recipe = TrainConfig(epochs=1, warmup_epochs=0, batch_size=128, lr=0.02, max_shift=0)
    weak = train_supernet(load_space(SPACE), recipe, ds, progress=False).supernet.eval()
    from nasprune.evaluate import Evaluator

    cfg = weak.space.largest()
    before = Evaluator(weak, ds).accuracy(cfg, "val")
    # the teacher (no trained weights in the space: the largest subnet) scores as the search scores it,
    # BatchNorm recalibrated, not on the shared statistics that fit no single subnet
    from nasprune.evaluate import accuracy_of
    from nasprune.finetune import teacher_of

    xv, yv = ds.tensors("val")
    assert accuracy_of(teacher_of(weak, ds), xv, yv) == before
    res = finetune_subnet(weak, cfg, ds, epochs=3)
    x, y = ds.tensors("val")
    after = float((res.model(x).argmax(1) == y).float().mean())
    assert after > before + 0.05, (before, after)
    assert res.epochs_done == pytest.approx(3, abs=0.05)
    # a job may turn it off: then nothing is fine-tuned and the inherited model is delivered
    root, _ = prepared
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=6, seed=2, finetune_epochs=0)
    res = run_job(job, _ctx(root, "no-ft", tmp_path))
    assert res.recommended is not None and res.recommended.delivered is None
    assert res.recommended.finetuned_accuracy is None
    assert "delivered" not in read_metadata(tmp_path / "no-ft" / "model.onnx")
