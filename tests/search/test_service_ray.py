"""A ``backend: ray`` job through the real service: ``nasprune serve`` in its own process starts a
local Ray for the job, in a worker thread of its pool, and still shuts down cleanly on SIGTERM."""

from __future__ import annotations

import signal

import pytest

from nasprune.service.jobs import JobStore
from nasprune.settings import Settings
from tests.search.test_service_e2e import Service, _submit, data_dir  # noqa: F401  (fixture)


@pytest.mark.slow
def test_ray_jobs_through_the_api_and_a_sigterm_mid_job(data_dir, budget):  # noqa: F811
    """One serve (one local Ray start, the slow part): a Ray job runs to the end and delivers; a second
    one is interrupted by SIGTERM, serve stops cleanly, and the job is re-queued, not failed."""
    svc = Service(data_dir)
    try:
        job_id = _submit(svc, budget, 4, backend="ray", seed=3, finetune_steps=0)
        state = svc.wait(job_id, lambda s: s["status"] == "succeeded", timeout_s=400)
        assert state["progress"]["n_done"] == 4 and state["error"] is None
        trials = [t for t in svc.all_trials(job_id) if t["state"] == "complete"]
        assert len(trials) == 4 and all(t["user_attrs"].get("ray_node_id") for t in trials)
        front = svc.http.get(f"/v1/jobs/{job_id}/pareto").json()
        assert front["recommended_id"] and svc.http.get(f"/v1/jobs/{job_id}/model").status_code == 200

        long_id = _submit(svc, budget, 400, backend="ray", sampler="random", seed=4)
        svc.wait(long_id, lambda s: s["progress"]["n_done"] >= 1, timeout_s=400)
    finally:
        svc.kill(signal.SIGTERM)
    with open(svc.log.name, errors="replace") as f:
        out = f.read()
    assert svc.proc.returncode == 0, out[-3000:]
    assert "Shutting down" in out and "nasprune serve stopped" in out, out[-3000:]

    # the job was stopped at a trial boundary and re-queued, not failed: what the next serve would claim, read
    # from the job database serve left (a second serve would start Ray again for it: the test's slow part)
    store = JobStore(Settings(data_dir=data_dir).db_url)
    try:
        stopped = store.get(long_id)
        assert stopped.status == "queued" and stopped.error is None, stopped
        assert store.get(job_id).status == "succeeded"
    finally:
        store.close()
