"""The MLflow layout a job leaves, as a user meets it: a real `nasprune serve --mlflow-port` with its own
MLflow server, one small job over HTTP, then MLflow's REST API (experiment kind, run names, the
recommended trial, measured latency, the logged and registered model) and MLflow's UI in headless
Chromium (the run page shows the recommended trial; the Pareto plot opens in the artifacts view).

One service and one job serve every test of this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from nasprune.mlflow_server import free_port
from tests.search.conftest import SPACE, assert_verified_or_too_busy
from tests.search.test_service_e2e import Service

N = 16
pytestmark = pytest.mark.slow  # one serve, its MLflow server and a 16-trial job: ~3 min at load ~9 on 2 cores


@dataclass
class Job:
    svc: Service
    mlflow: str
    id: str
    state: dict
    budget: float
    data_dir: Path

    def api(self, path: str, **body) -> dict:
        url = f"{self.mlflow}/api/2.0/mlflow/{path}"
        r = httpx.post(url, json=body, timeout=30) if body else httpx.get(url, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def job(prepared, tmp_path_factory):
    root, table = prepared
    data_dir = tmp_path_factory.mktemp("layout") / "data"
    shutil.copytree(root, data_dir, ignore=shutil.ignore_patterns("*.db", "jobs", "mlflow"))
    rng = np.random.default_rng(0)
    budget = float(np.quantile([table.predict(table.space.sample(rng)) for _ in range(400)], 0.6))
    port = free_port()
    svc = Service(data_dir, "--mlflow-port", str(port))
    try:
        r = svc.http.post("/v1/jobs", json={"space": SPACE, "latency_budget_ms": budget, "n_trials": N, "seed": 11})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        state = svc.wait(job_id, lambda s: s["status"] == "succeeded")
        yield Job(svc, f"http://127.0.0.1:{port}", job_id, state, budget, data_dir)
    finally:
        svc.kill()


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_layout_through_the_rest_api(job, monkeypatch):
    state = job.state
    # the link is built from the MLflow address serve has now; the job store keeps it relative
    exp_id = state["mlflow_run_url"].split("/")[-3]
    expected = f"{job.mlflow}/#/experiments/{exp_id}/runs/{state['mlflow_run_id']}?workflowType=machine_learning"
    assert state["mlflow_run_url"] == expected
    assert state["links"]["mlflow"] == state["mlflow_run_url"]
    with sqlite3.connect(job.data_dir / "nasprune.db") as db:
        (stored,) = db.execute("select mlflow_run_url from nasprune_jobs where id = ?", (job.id,)).fetchone()
    assert stored.startswith("#/experiments/")

    run = job.api(f"runs/get?run_id={state['mlflow_run_id']}")["run"]
    exp = job.api(f"experiments/get?experiment_id={run['info']['experiment_id']}")["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    name = run["info"]["run_name"]
    assert SPACE in name and "local-cpu" in name and f"{job.budget:.4g}ms" in name
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert "None" not in params.values() and float(params["latency_budget_ms"]) == pytest.approx(job.budget)
    parent_metrics = _metrics(run)
    assert parent_metrics["latency_budget_ms"] == pytest.approx(job.budget) and parent_metrics["n_trials"] == N

    front = job.svc.http.get(f"/v1/jobs/{job.id}/pareto").json()
    rec = next(c for c in front["candidates"] if c["candidate_id"] == front["recommended_id"])
    assert_verified_or_too_busy(rec, job.budget)
    if rec["measured_latency_ms"] is None:  # a machine too busy to trust a timing: recommended unverified
        assert "recommended_measured_latency_ms" not in parent_metrics
    else:
        assert parent_metrics["recommended_measured_latency_ms"] == pytest.approx(rec["measured_latency_ms"])
    note = _tags(run)["mlflow.note.content"]
    assert f"Recommended: [trial {rec['trial_number']}]" in note and "| trial | val acc." in note
    assert note.count("\n| [") == len(front["candidates"])  # one table row per front candidate

    children = job.api(
        "runs/search",
        experiment_ids=[run["info"]["experiment_id"]],
        filter=f"tags.mlflow.parentRunId = '{run['info']['run_id']}'",
        max_results=1000,
    )["runs"]
    assert len(children) == N
    by_trial = {int(_tags(c)["nasprune.trial"]): c for c in children}
    recommended = [c for c in children if _tags(c).get("nasprune.recommended") == "true"]
    assert [int(_tags(c)["nasprune.trial"]) for c in recommended] == [rec["trial_number"]]
    assert recommended[0]["info"]["run_name"] == f"trial-{rec['trial_number']} (recommended)"
    for c in children:
        m = _metrics(c)
        assert {"val_accuracy", "predicted_latency_ms", "params", "macs"} <= m.keys()
        assert "accuracy" not in m and "latency_ms" not in m
    for cand in front["candidates"]:
        m, t = _metrics(by_trial[cand["trial_number"]]), _tags(by_trial[cand["trial_number"]])
        assert t["pareto"] == "true" and t["verified"] == str(cand["verified"]).lower()
        if cand["measured_latency_ms"] is None:
            assert "measured_latency_ms" not in m  # never a 0.0 for "not measured"
        else:
            assert m["measured_latency_ms"] == pytest.approx(cand["measured_latency_ms"])
            assert m["test_accuracy"] == pytest.approx(cand["test_accuracy"])
    assert rec["measured_latency_ms"] is None or _metrics(recommended[0])["measured_latency_ms"] > 0

    # the trial storage names both objectives' constraints (Optuna 5 keeps them as constraints:<name>)
    trials = job.svc.http.get(f"/v1/jobs/{job.id}/trials", params={"limit": 500}).json()["items"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) == N and all(set(t["constraints"]) == {"latency_ms"} for t in complete)
    feasible = {int(_tags(c)["nasprune.trial"]) for c in children if _tags(c)["feasible"] == "true"}
    assert {t["number"] for t in complete if t["constraints"]["latency_ms"] <= 0} == feasible

    # the delivered model: a logged model of the parent run, with a signature and an input example,
    # registered as a new version of nasprune-<space> that the alias "recommended" points to
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.mlflow)
    (model,) = [
        m
        for m in client.search_logged_models(experiment_ids=[run["info"]["experiment_id"]])
        if m.source_run_id == run["info"]["run_id"]
    ]
    assert model.status == LoggedModelStatus.READY
    files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "model.onnx", "input_example.json"} <= files, files
    r = httpx.get(
        f"{job.mlflow}/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files",
        params={"artifact_file_path": "MLmodel"},
        timeout=30,
    )
    mlmodel = yaml.safe_load(r.text)
    assert "onnx" in mlmodel["flavors"] and mlmodel["model_id"] == model.model_id
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert inputs[0]["type"] == "tensor" and inputs[0]["tensor-spec"]["shape"] == [-1, 64]
    assert mlmodel["metadata"]["nasprune"]["normalization"]["mean"]  # the preprocessing travels with the model
    version = client.get_model_version_by_alias(f"nasprune-{SPACE}", "recommended")
    assert version.run_id == run["info"]["run_id"] and version.source == f"models:/{model.model_id}"
    # and it loads by its alias, as docs/mlflow.md shows, and predicts
    import mlflow.pyfunc

    from nasprune.data import load_dataset

    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.mlflow)
    loaded = mlflow.pyfunc.load_model(f"models:/nasprune-{SPACE}@recommended")
    x, y = load_dataset("digits").tensors("test")
    out = loaded.predict(x[:50].numpy())
    logits = out["logits"] if isinstance(out, dict) else np.asarray(out)
    assert logits.shape == (50, 10) and np.mean(logits.argmax(1) == y[:50].numpy()) > 0.5

    # and the service log has no "View run trial-N" line per trial
    log = next(job.data_dir.glob("serve-*.log")).read_text(errors="replace")
    assert "View run" not in log


def test_mlflow_port_with_a_token_is_refused_naming_the_flag(tmp_path):
    env = {**os.environ, "NASPRUNE_API_TOKEN": "secret-token"}
    cmd = [sys.executable, "-m", "nasprune", "serve", "--data-dir", str(tmp_path), "--mlflow-port", "5999"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "--mlflow-port" in out.stderr and "token" in out.stderr, out.stderr


def _chromium() -> str:
    """Debian's headless Chromium, which the README's test command (``make test``) installs."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "headless Chromium is not installed: 'make test' installs it as root with apt-get; otherwise run "
            "'apt-get update && apt-get install --no-install-recommends chromium' as root"
        )
    return found


def _render(chromium: str, url: str, tmp: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` after MLflow's UI has rendered it (and a screenshot when asked)."""
    args = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1500,1300",
        "--virtual-time-budget=30000",
        "--run-all-compositor-stages-before-draw",
    ]
    if screenshot is not None:
        out = subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
        assert screenshot.is_file(), out.stderr[-2000:]
    out = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_run_page_in_mlflows_ui_shows_the_recommended_trial_and_the_plot(job, tmp_path):
    chromium = _chromium()
    state = job.state
    front = job.svc.http.get(f"/v1/jobs/{job.id}/pareto").json()
    rec = next(c for c in front["candidates"] if c["candidate_id"] == front["recommended_id"])
    shot = tmp_path / "run_page.png"
    dom = _render(chromium, state["mlflow_run_url"], tmp_path, screenshot=shot)
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert re.search(rf"Recommended: trial {rec['trial_number']} : validation accuracy", text), text[-3000:]
    assert "Pareto front" in dom and state["mlflow_run_id"] in dom
    page, view = state["mlflow_run_url"].split("?")
    plot_shot = tmp_path / "pareto_artifact.png"
    plot = _render(chromium, f"{page}/artifactPath/pareto.png?{view}", tmp_path, screenshot=plot_shot)
    assert '<img alt="pareto.png"' in plot
    keep = os.environ.get("NASPRUNE_SCREENSHOT_DIR")  # docs/img/ is refreshed from here by hand
    if keep:
        shutil.copy(shot, Path(keep) / "mlflow_run_page.png")
        shutil.copy(plot_shot, Path(keep) / "mlflow_pareto_artifact.png")
