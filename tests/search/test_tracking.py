"""MLflow tracking against a real `mlflow server` on loopback, checked through its REST API."""

from __future__ import annotations

import httpx
import pytest

from nasprune.mlflow_server import free_port, mlflow_server
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from tests.search.conftest import SPACE, assert_verified_or_too_busy

N = 10


def _ctx(root, job_id, tmp_path, tracking_uri):
    return JobContext(
        job_id=job_id,
        storage_url=f"sqlite:///{tmp_path / 'trials.db'}",
        output_dir=tmp_path / job_id,
        data_dir=root,
        tracking_uri=tracking_uri,
    )


def _api(url: str, path: str, **kw):
    r = (
        httpx.post(f"{url}/api/2.0/mlflow/{path}", json=kw, timeout=10)
        if kw
        else httpx.get(f"{url}/api/2.0/mlflow/{path}", timeout=10)
    )
    r.raise_for_status()
    return r.json()


def test_job_and_trials_land_in_mlflow(prepared, budget, shared_mlflow, tmp_path):
    root, _ = prepared
    srv = shared_mlflow  # other tests' jobs log there too: this one reads its own job's runs
    res = run_job(
        SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=N, seed=3),
        _ctx(root, "tracked", tmp_path, srv.url),
    )
    assert res.tracking_error is None
    exp = httpx.get(
        f"{srv.url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": f"nasprune/{SPACE}"},
        timeout=10,
    ).json()["experiment"]
    runs = _api(srv.url, "runs/search", experiment_ids=[exp["experiment_id"]], max_results=1000)["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if t.get("nasprune.job_id") == "tracked"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED"
    pid = parent["info"]["run_id"]
    children = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == pid]
    assert len(children) == N
    assert sorted(int(t["nasprune.trial"]) for _, t in children) == list(range(N))
    pareto_ids = {c.trial_number for c in res.pareto}
    for run, t in children:
        metrics = {m["key"] for m in run["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert {"val_accuracy", "predicted_latency_ms", "params", "macs"} <= metrics
        assert "depth.blocks.0-2" in params and "width.stem.0" in params
        assert "None" not in params.values()
        assert t["pareto"] == str(int(t["nasprune.trial"]) in pareto_ids).lower()
        assert t["feasible"] in ("true", "false")
    verified = [(r, t) for r, t in children if t["verified"] == "true"]
    assert all(t["pareto"] == "true" for _, t in verified)
    assert_verified_or_too_busy(res.recommended, budget)
    assert bool(verified) == res.recommended.verified
    for run, _ in verified:  # measured, and scored on the test split
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["measured_latency_ms"] > 0 and 0 < metrics["test_accuracy"] <= 1
    (rec_run, rec_tags) = next((r, t) for r, t in children if t.get("nasprune.recommended") == "true")
    assert int(rec_tags["nasprune.trial"]) == res.recommended.trial_number
    assert rec_run["info"]["run_name"] == f"trial-{res.recommended.trial_number} (recommended)"
    assert sum(t.get("nasprune.recommended") == "true" for _, t in children) == 1
    arts = _api(srv.url, f"artifacts/list?run_id={pid}")["files"]
    assert {"pareto.json", "pareto.png"} <= {a["path"] for a in arts}
    parent_metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert parent_metrics["n_trials"] == N and parent_metrics["latency_budget_ms"] == pytest.approx(budget)
    assert parent_metrics["recommended_val_accuracy"] == pytest.approx(res.recommended.accuracy)
    parent_params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert "None" not in parent_params.values() and "dataset" not in parent_params
    # one best-so-far point per trial: never decreasing over the trial numbers
    history = _api(srv.url, f"metrics/get-history?run_id={pid}&metric_key=best_feasible_val_accuracy")["metrics"]
    values = [m["value"] for m in sorted(history, key=lambda m: m["step"])]
    feasible = [
        next(m["value"] for m in r["data"]["metrics"] if m["key"] == "val_accuracy")
        for r, t in children
        if t["feasible"] == "true"
    ]
    assert values and values == sorted(values) and values[-1] == pytest.approx(max(feasible))


def test_search_completes_when_tracking_server_is_down(prepared, budget, tmp_path):
    root, _ = prepared
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    ctx = _ctx(root, "untracked", tmp_path, dead)
    ctx.tracking_drain_s = 0.5  # what is still queued at the end waits this long for MLflow (default 60 s)
    res = run_job(SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=6, seed=4, finetune_steps=0), ctx)
    assert res.n_trials == 6 and res.recommended is not None
    assert res.tracking_error and "MLflow tracking at" in res.tracking_error and dead in res.tracking_error
    assert (tmp_path / "untracked" / "model.onnx").is_file()


def test_supernet_training_lands_in_mlflow(tmp_path):
    """`train_supernet` with a tracker: params, one metric point per epoch, the checkpoint artifact."""
    from nasprune.tracking import MlflowTracker
    from nasprune.train import TrainConfig, train_supernet

    recipe = TrainConfig(epochs=3, warmup_epochs=1, batch_size=64, max_shift=0, n_random=1)
    with mlflow_server(tmp_path / "mlflow") as srv:
        tracker = MlflowTracker(srv.url)
        res = train_supernet("mlp_digits", recipe, tracker=tracker, progress=False, checkpoint=tmp_path / "sn.pt")
        assert tracker.error is None
        exp = httpx.get(
            f"{srv.url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": "nasprune/mlp_digits/train"},
            timeout=10,
        ).json()["experiment"]
        (run,) = _api(srv.url, "runs/search", experiment_ids=[exp["experiment_id"]])["runs"]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["space"] == "mlp_digits" and params["epochs"] == "3" and params["n_random"] == "1"
        run_id = run["info"]["run_id"]
        history = _api(srv.url, f"metrics/get-history?run_id={run_id}&metric_key=train_loss")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3]
        assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == pytest.approx(
            [h["train_loss"] for h in res.history]
        )
        (art,) = _api(srv.url, f"artifacts/list?run_id={run_id}&path=checkpoint")["files"]
        assert art["path"] == "checkpoint/sn.pt" and int(art["file_size"]) == (tmp_path / "sn.pt").stat().st_size


def test_job_links_are_made_from_the_current_tracking_uri():
    from nasprune.service.jobs.tracking import run_link, run_path

    stored = run_path("3", "abc")
    assert stored == "#/experiments/3/runs/abc"  # what the job store keeps: no address
    view = "?workflowType=machine_learning"
    assert run_link("http://u:secret@127.0.0.1:9000/mlflow", stored) == f"http://127.0.0.1:9000/mlflow/{stored}{view}"
    # a link an older version stored absolute, with the port of a server long gone, follows the current one
    old = "http://127.0.0.1:41234/#/experiments/3/runs/abc"
    assert run_link("http://127.0.0.1:5000/", old) == f"http://127.0.0.1:5000/{stored}{view}"
    assert run_link(f"sqlite:///{'x'}/mlflow.db", stored) is None and run_link("http://h:1", None) is None


def test_a_candidates_figures_say_what_they_are_and_leave_unset_ones_out():
    from nasprune.search.job import Candidate
    from nasprune.tracking import candidate_figures

    cand = Candidate(
        candidate_id="0123456789abcdef",
        trial_number=4,
        config={},
        accuracy=0.91,
        latency_ms=0.5,
        params=10,
        macs=20,
        feasible=True,
        verified=True,
        measured_latency_ms=0.52,
        test_accuracy=0.9,
        inherited_accuracy=0.88,
        delivered="fine-tuned",
    )
    metrics, tags = candidate_figures(cand, (0.88, 0.5))  # the trial's own val accuracy and predicted latency
    assert metrics["measured_latency_ms"] == 0.52 and metrics["test_accuracy"] == 0.9
    assert metrics["inherited_val_accuracy"] == 0.88 and metrics["delivered_val_accuracy"] == 0.91
    assert "delivered_predicted_latency_ms" not in metrics  # the same as the trial's
    assert "machine_speed" not in metrics and "latency_spread" not in metrics  # unset: absent, not 0.0
    assert tags["nasprune.delivered"] == "fine-tuned" and "None" not in tags.values()
