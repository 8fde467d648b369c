"""Jobs and trials on a real PostgreSQL server, through the same code as SQLite (a URL setting only).

- The search killed with SIGKILL mid-run resumes from its Optuna study on PostgreSQL, losing and
  repeating no trial.
- The deployed layout, configured by ``NASPRUNE_*`` alone: ``nasprune api`` and two ``nasprune
  worker`` processes share one PostgreSQL job database; MLflow is a tracking server on PostgreSQL
  with its artifacts in an S3-compatible store. Two jobs run at once, one per worker; the worker of
  one is SIGKILLed mid-search and the other takes the job over and finishes it without losing or
  repeating trials.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import onnx
import pytest
from mlflow import MlflowClient

from nasprune.mlflow_server import free_port
from nasprune.search.study import load_trials
from nasprune.service.jobs import JobStore
from tests.cluster import mlflow_server, s3_server
from tests.search.conftest import SPACE

N_LONG = 40  # the job a worker is killed in (after its 10th trial); the other job has 20


class Role:
    """``python -m nasprune <role>`` configured by environment variables only; waits for ``/readyz``."""

    def __init__(self, role: str, env: dict[str, str], log_dir: Path, timeout_s: float = 120.0, wait: bool = True):
        self.role, self.timeout_s = role, timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{role}-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}
        full_env.update(env, NASPRUNE_HOST="127.0.0.1", NASPRUNE_PORT=str(self.port), PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nasprune", role, "--no-access-log"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
            )
        if wait:
            self.ready()

    def ready(self) -> Role:
        """Wait until its ``/readyz`` answers 200 (the process must not exit meanwhile)."""
        role, deadline = self.role, time.monotonic() + self.timeout_s
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{role} not ready: {self.log.read_text()[-3000:]}"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _wait(http: httpx.Client, job_id: str, done, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        assert job["status"] not in ("failed", "cancelled"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.mark.slow
def test_api_and_workers_share_postgresql_and_an_mlflow_server(prepared, budget, pg_server, tmp_path):
    root, _ = prepared
    data = tmp_path / "data"  # the volume the API and the workers share
    shutil.copytree(root, data)
    db = pg_server.create_database()
    roles: list[Role] = []
    with s3_server() as s3, mlflow_server(pg_server.create_database(), s3, tmp_path) as mlflow:
        env = {
            "NASPRUNE_DATA_DIR": str(data),
            "NASPRUNE_DATABASE_URL": db,
            "NASPRUNE_TRACKING_URI": mlflow.url,
            "NASPRUNE_HEARTBEAT_S": "2",
            "NASPRUNE_POLL_S": "0.2",
        }
        try:
            # started together (each spends seconds importing), then waited for
            roles = [Role(r, env, tmp_path, wait=False) for r in ("api", "worker", "worker")]
            for role in roles:
                role.ready()
            api, workers = roles[0], roles[1:]
            http = httpx.Client(base_url=api.url, timeout=30)
            spec = {"space": SPACE, "latency_budget_ms": budget, "sampler": "tpe", "verify_top_k": 1,
                    "finetune_steps": 0}  # fmt: skip
            long_id = http.post("/v1/jobs", json={**spec, "n_trials": N_LONG, "seed": 1}).json()["id"]
            short_id = http.post("/v1/jobs", json={**spec, "n_trials": 20, "seed": 2}).json()["id"]

            _wait(http, long_id, lambda j: j["progress"]["n_done"] >= 10)
            store = JobStore(db)
            owners = {store.get(long_id).owner, store.get(short_id).owner}
            pid_of_long = int(store.get(long_id).owner.split(":")[1])
            assert len(owners) == 2, "two queued jobs run at once, one per worker"
            victim = next(w for w in workers if w.proc.pid == pid_of_long)
            victim.proc.send_signal(signal.SIGKILL)  # a worker pod dies mid-job
            victim.proc.wait(30)
            before = load_trials(db, long_id)

            long_job = _wait(http, long_id, lambda j: j["status"] == "succeeded")
            short_job = _wait(http, short_id, lambda j: j["status"] == "succeeded")
            survivor = next(w for w in workers if w is not victim)
            assert int(store.get(long_id).owner.split(":")[1]) == survivor.proc.pid
            store.close()
            r = http.get(f"/v1/jobs/{long_id}/model")  # served by the API from the shared data dir
            assert r.status_code == 200, r.text
            onnx.checker.check_model(onnx.load_from_string(r.content))
        finally:
            for role in roles:
                role.stop()

        assert long_job["attempts"] == 2 and short_job["attempts"] == 1
        after = load_trials(db, long_id)
        assert len(after) == N_LONG and len({t.number for t in after}) == N_LONG
        kept = {t.number: t for t in after}
        assert all(kept[t.number] == t for t in before)

        # Tracked on the MLflow server: runs in PostgreSQL, artifacts in the object store.
        client = MlflowClient(mlflow.url)
        experiment = client.get_experiment_by_name(f"nasprune/{SPACE}")
        parent = client.get_run(long_job["mlflow_run_id"])
        assert parent.data.tags["nasprune.job_id"] == long_id
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        # one FINISHED child run per trial; a child the SIGKILL cut mid-write stays visible as KILLED
        # (the resumed job closes it so, then logs that trial again in full)
        finished = [c for c in children if c.info.status == "FINISHED"]
        assert len(finished) == N_LONG and len({c.data.tags["nasprune.trial"] for c in finished}) == N_LONG
        assert all(c.info.status in ("FINISHED", "KILLED") for c in children) and len(children) <= N_LONG + 2
        keys = s3.keys()
        # the delivered model: an MLflow logged model of the parent run, its files in the object store
        (model,) = [
            m
            for m in client.search_logged_models(experiment_ids=[experiment.experiment_id])
            if m.source_run_id == parent.info.run_id
        ]
        found = [k for k in keys if k.endswith(f"models/{model.model_id}/artifacts/model.onnx")]
        assert len(found) == 1, keys[:20]
        body = s3.client().get_object(Bucket=s3.bucket, Key=found[0])["Body"].read()
        onnx.checker.check_model(onnx.load_from_string(body))
        version = client.get_model_version_by_alias(f"nasprune-{SPACE}", "recommended")
        assert version.source == f"models:/{model.model_id}"
