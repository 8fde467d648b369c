"""The lean MLflow server ``nasprune serve`` starts, and the job -> MLflow run link through it."""

from __future__ import annotations

import httpx

from nasprune.mlflow_server import mlflow_server
from nasprune.paths import job_files
from nasprune.service.jobs.tracking import JOB_ID_TAG, check_tracking, find_job_run
from tests.service.fakes import instant_runner
from tests.service.server import running, wait_for


def test_mlflow_server_runs_and_links_job_runs(tmp_path, settings):
    from mlflow.tracking import MlflowClient

    with mlflow_server(tmp_path / "mlflow") as srv:
        assert srv.url.startswith("http://127.0.0.1:") and srv.alive()
        assert httpx.get(f"{srv.url}/health", timeout=5).status_code == 200
        assert check_tracking(srv.url) is None
        client = MlflowClient(srv.url)

        def runner(job, ctx):
            exp = client.create_experiment(f"nasprune/{ctx.job_id}")
            run = client.create_run(exp, tags={JOB_ID_TAG: ctx.job_id})
            job_files(ctx.output_dir).run_id.write_text(run.info.run_id)
            return instant_runner(job, ctx)

        with running(settings.model_copy(update={"tracking_uri": srv.url}), runner) as (api, _):
            assert api.get("/readyz").json()["checks"]["mlflow"] == "ok"
            job_id = api.post("/v1/jobs", json={"space": "mlp_digits", "latency_budget_ms": 1.0}).json()["id"]
            job = wait_for(api, job_id, ("succeeded",))
            assert job["mlflow_run_id"] and job["links"]["mlflow"] == job["mlflow_run_url"]
            assert job["mlflow_run_url"].startswith(f"{srv.url}/#/experiments/")
            assert job["mlflow_run_url"].endswith(f"/runs/{job['mlflow_run_id']}?workflowType=machine_learning")
            # without the marker file the run is found by its tag
            assert find_job_run(srv.url, job_id)[0] == job["mlflow_run_id"]
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert not srv.alive()
    try:
        httpx.get(f"{srv.url}/health", timeout=2)
        raise AssertionError("the MLflow server still answers after stop")
    except httpx.HTTPError:
        pass


def test_a_job_cancelled_while_requeued_after_a_crash_closes_the_run_its_attempt_left_running(tmp_path):
    """A worker died mid-job (its MLflow run is RUNNING), the job went back to the queue, and the user
    cancels it before another worker takes it: the run ends KILLED, not RUNNING forever."""
    import time

    from mlflow.tracking import MlflowClient

    from nasprune.mlflow_server import mlflow_server
    from nasprune.search.job import SearchJob
    from nasprune.service.api.catalog import Catalog
    from nasprune.service.api.service import JobService
    from nasprune.service.jobs import JobStore
    from nasprune.service.jobs.status import JobStatus
    from nasprune.settings import Settings

    with mlflow_server(tmp_path / "mlflow") as srv:
        settings = Settings(data_dir=tmp_path / "data", tracking_uri=srv.url)
        settings.data_dir.mkdir(parents=True)
        store = JobStore(settings.db_url)
        store.migrate()
        job = store.create(SearchJob(space="mlp_digits", latency_budget_ms=1.0, n_trials=5))
        assert store.claim_next("worker-a:1").id == job.id  # the first attempt starts ...
        client = MlflowClient(srv.url)
        run = client.create_run(client.create_experiment("nasprune/mlp_digits"))
        settings.job_dir(job.id).mkdir(parents=True, exist_ok=True)
        job_files(settings.job_dir(job.id)).run_id.write_text(run.info.run_id)
        assert store.requeue(job.id)  # ... and its worker dies: re-queued, run left RUNNING
        service = JobService(settings, store, None, Catalog(settings))
        try:
            assert service.cancel(job.id).status is JobStatus.CANCELLED
            deadline = time.monotonic() + 60
            while client.get_run(run.info.run_id).info.status == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get_run(run.info.run_id).info.status == "KILLED"
        finally:
            service.trials_reader.close()
            store.close()
