"""A tracking outage, with a real MLflow server that the test kills: seen while it lasts, recovered from.

- the supervisor restarts a killed server at the same address and stops the uvicorn process it leaves;
- a job whose MLflow server dies mid-search shows it on its status within a heartbeat, goes on, and
  logs the trials of the outage late once the server is back;
- a job that fails closes its run FAILED; a resumed job closes a child run left RUNNING as KILLED.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from nasprune.mlflow_server import Supervisor, free_port, start_mlflow_server
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from nasprune.settings import Settings
from tests.search.conftest import SPACE
from tests.service.server import running, wait_for


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _runs(url: str, experiment: str) -> tuple[list[dict], list[dict]]:
    exp = httpx.get(
        f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment}, timeout=10
    ).json()["experiment"]
    runs = httpx.post(
        f"{url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [exp["experiment_id"]], "max_results": 1000},
        timeout=10,
    ).json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    return runs, tags


def test_supervisor_restarts_a_killed_server_and_stops_its_leftovers(tmp_path):
    events: list[str] = []
    sup = Supervisor(tmp_path / "mlflow", check_s=0.2, min_backoff_s=0.5, max_backoff_s=2.0, on_event=events.append)
    sup.start()
    try:
        first = sup.server
        url = sup.url
        pgid = first.process.pid
        assert len(_group_pids(pgid)) >= 2  # `mlflow server` and the uvicorn process it started
        os.kill(first.process.pid, signal.SIGKILL)  # the `mlflow server` PID only, as a user would
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (sup.restarts == 1 and sup.server.healthy()):
            time.sleep(0.2)
        assert sup.restarts == 1 and sup.server is not first and sup.url == url
        assert sup.server.healthy() and httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert _group_pids(pgid) == []  # no uvicorn left serving from the killed server's group, no zombie
        assert first.process.returncode == -signal.SIGKILL
        assert any("restarting it in" in e for e in events) and any("restarted at" in e for e in events)
    finally:
        sup.stop()
    assert _group_pids(sup.server.process.pid) == []


@pytest.fixture
def data_dir(prepared, tmp_path):
    root, _ = prepared
    d = tmp_path / "data"
    shutil.copytree(root, d, ignore=shutil.ignore_patterns("*.db", "jobs", "mlflow"))
    return d


def test_outage_is_shown_within_a_heartbeat_and_trials_are_logged_late(data_dir, budget, tmp_path, monkeypatch):
    import nasprune.search.runner
    from nasprune.tracking import JobTracker

    # the job's tracker retries at most every 2 s (30 s by default): the late logs go out soon after MLflow is back
    monkeypatch.setattr(nasprune.search.runner, "JobTracker", functools.partial(JobTracker, max_backoff_s=2.0))
    port = free_port()
    root = tmp_path / "mlflow"
    server = {"srv": start_mlflow_server(root, port=port)}
    url = server["srv"].url
    back = threading.Event()
    n = 30

    def runner(job, ctx: JobContext):
        def on_progress(p):
            ctx.on_progress(p)
            if p.n_done == 5 and server["srv"].alive():
                server["srv"].stop()  # MLflow goes away mid-search; the search goes on
            if p.n_done == 15:
                back.wait(120)  # hold the search until the test saw the outage and brought MLflow back

        return run_job(job, replace(ctx, on_progress=on_progress))

    settings = Settings(data_dir=data_dir, poll_s=0.05, heartbeat_s=1.0, tracking_uri=url)
    try:
        with running(settings, runner) as (api, _):
            job_id = api.post(
                "/v1/jobs",
                json={"space": SPACE, "latency_budget_ms": budget, "n_trials": n, "seed": 8, "finetune_steps": 0},
            ).json()["id"]
            job = wait_for(api, job_id, ("running",), timeout_s=120, until=lambda j: j["progress"]["n_done"] >= 5)
            down_at = time.monotonic()
            job = wait_for(api, job_id, ("running",), timeout_s=30, until=lambda j: j["tracking_error"])
            shown_after = time.monotonic() - down_at
            # back at the same address; started from this thread (a server dies with the thread that started it)
            server["srv"] = start_mlflow_server(root, port=port)
            back.set()
            message = job["tracking_error"]
            assert shown_after < 3 * settings.heartbeat_s + 5, shown_after  # a heartbeat, plus the 2 s health check
            assert f"MLflow server at {url} is unreachable: it refuses connections" in message and "since" in message
            assert "Traceback" not in message and len(message) < 300
            job = wait_for(api, job_id, ("succeeded", "failed"), timeout_s=300)
        assert job["status"] == "succeeded", job
        final = job["tracking_error"]
        assert final and f"MLflow tracking at {url} was unreachable for" in final and "logged late" in final
        late = int(final.split("; ")[-1].split()[0])
        assert late >= 1
        runs, tags = _runs(url, f"nasprune/{SPACE}")
        parent = next(r for r, t in zip(runs, tags, strict=True) if t.get("nasprune.job_id") == job_id)
        assert parent["info"]["status"] == "FINISHED"
        pid = parent["info"]["run_id"]
        children = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == pid]
        assert sorted(int(t["nasprune.trial"]) for _, t in children) == list(range(n))  # none lost, none twice
        assert all(r["info"]["status"] == "FINISHED" for r, _ in children)
        assert job["mlflow_run_id"] == pid
    finally:
        server["srv"].stop()


def _ctx(root, job_id, tmp_path, tracking_uri, **kw):
    return JobContext(
        job_id=job_id,
        storage_url=f"sqlite:///{tmp_path / 'trials.db'}",
        output_dir=tmp_path / job_id,
        data_dir=root,
        tracking_uri=tracking_uri,
        **kw,
    )


def test_failed_job_closes_its_run_and_a_resumed_job_kills_the_interrupted_trial_run(
    prepared, budget, shared_mlflow, tmp_path
):
    from mlflow.tracking import MlflowClient

    root, _ = prepared
    srv = shared_mlflow  # its job's runs are found from the run id the job wrote
    client = MlflowClient(srv.url)
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=8, seed=9, finetune_steps=0)

    def crash(p):
        if p.n_done == 3:
            raise RuntimeError("the worker died")

    with pytest.raises(RuntimeError, match="the worker died"):
        run_job(job, _ctx(root, "crashy", tmp_path, srv.url, on_progress=crash))
    marker = tmp_path / "crashy" / "mlflow_run_id"
    parent = client.get_run(marker.read_text().strip())
    assert parent.info.status == "FAILED"

    # a process killed while logging trial 1 leaves its child run RUNNING (made here as it would be)
    exp = parent.info.experiment_id
    interrupted = client.create_run(
        exp, tags={"mlflow.parentRunId": parent.info.run_id, "nasprune.trial": "1"}, run_name="trial-1"
    ).info.run_id
    res = run_job(job, _ctx(root, "crashy", tmp_path, srv.url))
    assert res.n_trials == 8 and res.tracking_error is None
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # the same run, resumed
    assert client.get_run(interrupted).info.status == "KILLED"
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100)
    finished = sorted(int(r.data.tags["nasprune.trial"]) for r in children if r.info.status == "FINISHED")
    assert finished == list(range(8))


def test_supervisor_backs_off_boundedly_while_the_server_cannot_start(tmp_path):
    """The port is taken while the server is down: restarts fail, the waits double up to the cap (0.6 s, then
    1.0 s instead of 1.2 s: two real failed starts show both), and the server comes back once the port is free."""
    import socket

    events: list[str] = []
    sup = Supervisor(tmp_path / "mlflow", check_s=0.2, min_backoff_s=0.6, max_backoff_s=1.0, on_event=events.append)
    sup.start()
    blocker = socket.socket()
    try:
        port = int(sup.url.rsplit(":", 1)[1])
        sup.server.stop()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum("did not restart" in e for e in events) < 2:
            time.sleep(0.2)
        waits = [float(e.split("restarting it in ")[1].split()[0]) for e in events if "restarting it in" in e]
        assert sum("did not restart" in e for e in events) >= 2 and sup.restarts == 0
        assert waits[:2] == [0.6, 1.0], events  # doubled, then capped
        blocker.close()
        while time.monotonic() < deadline and not (sup.restarts == 1 and sup.server.healthy()):
            time.sleep(0.2)
        assert sup.restarts == 1 and httpx.get(f"{sup.url}/health", timeout=5).status_code == 200
    finally:
        blocker.close()
        sup.stop()


def test_a_job_given_up_after_crashes_closes_its_run_failed(shared_mlflow, tmp_path):
    """A job whose worker died in it three times is failed on the fourth claim, and its MLflow run with it."""
    from mlflow.tracking import MlflowClient

    from nasprune.service.jobs.store import JobStore
    from tests.service.fakes import instant_runner

    srv = shared_mlflow  # an experiment of its own ("crashes")
    settings = Settings(data_dir=tmp_path / "data", poll_s=0.05, heartbeat_s=0.5, tracking_uri=srv.url).prepare()
    store = JobStore(settings.db_url)
    store.migrate()
    rec = store.create(SearchJob(space=SPACE, latency_budget_ms=1.0, n_trials=5))
    client = MlflowClient(srv.url)
    run_id = client.create_run(client.create_experiment("crashes"), tags={"nasprune.job_id": rec.id}).info.run_id
    settings.job_dir(rec.id).mkdir(parents=True, exist_ok=True)
    (settings.job_dir(rec.id) / "mlflow_run_id").write_text(run_id)
    for i in range(3):  # three workers died inside it
        assert store.claim_next(f"crashed-{i}").id == rec.id
        assert store.requeue(rec.id, owner=f"crashed-{i}")
    store.close()
    with running(settings, instant_runner) as (api, _):
        job = wait_for(api, rec.id, ("failed",))
    assert "gave up after 3 attempts" in job["error"]
    assert client.get_run(run_id).info.status == "FAILED"
