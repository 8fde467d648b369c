"""A real search job on `nasprune serve` with users (NASPRUNE_AUTH=users): the member who submitted it follows
it and downloads its model, another member cannot see it, and the keys are nowhere the job put anything:
not in its MLflow runs (tags, params, metrics), the data dir (job store, trials, MLflow's store and
artifacts, job folders), the server's output (access log on), nor any process it started."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from nasprune.cli import main
from tests.search.conftest import SPACE
from tests.search.test_service_e2e import Service
from tests.service.test_mlflow_auth import descendants


@pytest.fixture
def data_dir(prepared, tmp_path):
    root, _ = prepared
    d = tmp_path / "data"
    shutil.copytree(root, d, ignore=shutil.ignore_patterns("*.db", "jobs", "mlflow"))
    return d


def _issue(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.slow  # a real 6-trial job on serve and its MLflow server: ~90 s on 2 loaded cores
def test_a_members_job_end_to_end_and_no_key_anywhere(data_dir, budget, capsys):
    data = ["--data-dir", str(data_dir)]
    keys = {
        name: _issue(capsys, "users", "add", name, "--role", role, *data)
        for name, role in (("root", "admin"), ("alice", "member"), ("bob", "member"))
    }
    svc = Service(data_dir, env={"NASPRUNE_AUTH": "users"})
    try:
        alice, bob, root = ({"Authorization": f"Bearer {keys[n]}"} for n in ("alice", "bob", "root"))
        assert svc.http.post("/v1/jobs", json={"space": SPACE, "latency_budget_ms": budget}).status_code == 401
        r = svc.http.post(
            "/v1/jobs", json={"space": SPACE, "latency_budget_ms": budget, "n_trials": 6, "seed": 1}, headers=alice
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        svc.http.headers.update(alice)
        state = svc.wait(job_id, lambda s: s["status"] == "succeeded")
        assert state["user"] == "alice"
        assert svc.http.get(f"/v1/jobs/{job_id}/model").status_code == 200
        svc.http.headers.pop("Authorization")
        assert svc.http.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
        assert svc.http.get(f"/v1/jobs/{job_id}/model", headers=bob).status_code == 404
        assert job_id not in svc.http.get("/v1/jobs", headers=bob).text

        # the job's MLflow runs, read by the admin through the proxy: no key in any tag, param or metric
        mlflow = f"{svc.url}/mlflow/api/2.0/mlflow"
        parent = httpx.get(f"{mlflow}/runs/get", params={"run_id": state["mlflow_run_id"]}, headers=root).json()
        runs = httpx.post(
            f"{mlflow}/runs/search",
            json={"experiment_ids": [parent["run"]["info"]["experiment_id"]], "max_results": 1000},
            headers=root,
            timeout=30,
        ).json()["runs"]
        assert len(runs) >= 7  # the job's run and one per trial
        assert (
            httpx.get(f"{mlflow}/runs/get", params={"run_id": state["mlflow_run_id"]}, headers=alice).status_code == 403
        )
        for proc in descendants(svc.proc.pid):
            try:
                environ = Path(f"/proc/{proc}/environ").read_bytes()
            except OSError:
                continue
            assert not any(k.encode() in environ for k in keys.values()), proc
    finally:
        svc.kill()
    text = str(runs)
    secrets_ = [*keys.values(), *(k.split("_", 2)[2] for k in keys.values())]
    assert not any(s in text for s in secrets_)
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(s.encode() in blob for s in secrets_), path
