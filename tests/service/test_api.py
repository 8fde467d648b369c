"""The API through a real uvicorn server on loopback: the main flow, bad input, auth, limits, cancel, restart."""

from __future__ import annotations

import json
import math
import time

import pytest

from nasprune.search.job import SearchJob
from nasprune.service.jobs import JobStatus, JobStore
from tests.service.fakes import FAKE_ONNX, GatedRunner, failing_runner, instant_runner
from tests.service.server import running, wait_for

GOOD = {"space": "mlp_digits", "latency_budget_ms": 2.0, "n_trials": 5}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One server for the read-mostly tests of this module (instant fake search, limit 50 trials)."""
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("api") / "data", poll_s=0.05, max_trials_per_job=50)
    with running(s, instant_runner) as (client, app):
        yield client, app


@pytest.fixture(scope="module")
def finished(api):
    client, _ = api
    r = client.post("/v1/jobs", json=GOOD)
    assert r.status_code == 202, r.text
    return wait_for(client, r.json()["id"], ("succeeded",))


def test_submit_and_follow_a_job(api):
    client, _ = api
    r = client.post("/v1/jobs", json=GOOD)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["links"]["pareto"] == f"/v1/jobs/{body['id']}/pareto"
    job = wait_for(client, body["id"], ("succeeded",))
    assert job["progress"]["stage"] == "done" and job["progress"]["n_done"] == 5
    assert job["best"] == {"accuracy": 0.9, "latency_ms": pytest.approx(1.6)}
    assert job["started_at"] and job["finished_at"] and job["attempts"] == 1 and job["error"] is None
    listed = client.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert body["id"] in [j["id"] for j in listed["items"]]


def test_pareto_and_models(api, finished):
    client, _ = api
    job_id = finished["id"]
    front = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert front["recommended_id"] == f"{1:016x}" and len(front["candidates"]) == 2
    first = front["candidates"][0]
    assert first["verified"] and first["within_budget"] and first["measured_latency_ms"] == pytest.approx(1.8)
    assert {"accuracy", "latency_ms", "params", "macs", "candidate_id", "model_url"} <= set(first)

    r = client.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200 and r.content == FAKE_ONNX
    assert r.headers["content-type"] == "application/octet-stream"
    assert f'filename="nasprune-mlp_digits-{1:016x}.onnx"' in r.headers["content-disposition"]
    etag = r.headers["etag"]
    assert client.get(f"/v1/jobs/{job_id}/model", headers={"If-None-Match": etag}).status_code == 304
    r = client.get(first["model_url"])
    assert r.status_code == 200 and r.content == FAKE_ONNX and r.headers["etag"] == etag

    r = client.get(front["candidates"][1]["model_url"])  # on the front, but never exported
    assert r.status_code == 404 and "no exported model" in r.json()["detail"]
    r = client.get(f"/v1/jobs/{job_id}/models/{'f' * 16}")
    assert r.status_code == 404 and "not on the Pareto front" in r.json()["detail"]


def bad_submissions():
    ok = json.dumps(GOOD)
    return [
        ("malformed json", ok[:-3], 400, "not valid JSON"),
        ("empty body", "", 422, "body: is required"),
        ("array body", "[1, 2]", 422, "must be a JSON object"),
        ("wrong type", json.dumps({**GOOD, "latency_budget_ms": "fast"}), 422, "latency_budget_ms"),
        ("n_trials type", json.dumps({**GOOD, "n_trials": "many"}), 422, "n_trials"),
        ("negative budget", json.dumps({**GOOD, "latency_budget_ms": -1}), 422, "greater than 0"),
        ("zero budget", json.dumps({**GOOD, "latency_budget_ms": 0}), 422, "greater than 0"),
        ("NaN budget", ok.replace("2.0", "NaN"), 422, "finite"),
        ("infinite budget", ok.replace("2.0", "Infinity"), 422, "finite"),
        ("overflowing budget", ok.replace("2.0", "1e999"), 422, "finite"),
        ("huge budget", json.dumps({**GOOD, "latency_budget_ms": 1e12}), 422, "less than or equal to 60000"),
        ("unknown space", json.dumps({**GOOD, "space": "imagenet"}), 422, "mlp_digits, resnet_mnist"),
        ("path-like space", json.dumps({**GOOD, "space": "../../etc/passwd"}), 422, "unknown search space"),
        ("unknown device", json.dumps({**GOOD, "device": "tpu"}), 422, "available: local-cpu"),
        ("n_trials over limit", json.dumps({**GOOD, "n_trials": 51}), 422, "allows per job (50)"),
        ("n_trials zero", json.dumps({**GOOD, "n_trials": 0}), 422, "n_trials"),
        ("bad sampler", json.dumps({**GOOD, "sampler": "grid"}), 422, "'nsga2', 'tpe' or 'random'"),
        ("unknown field", json.dumps({**GOOD, "budget": 3}), 422, "unknown field(s) 'budget'"),
        ("bad constraint", json.dumps({**GOOD, "constraints": {"max_params": -5}}), 422, "constraints.max_params"),
        ("missing space", json.dumps({"latency_budget_ms": 1}), 422, "space: Field required"),
    ]


@pytest.mark.parametrize(("name", "body", "status", "message"), bad_submissions(), ids=lambda v: str(v)[:20])
def test_bad_submissions_are_4xx_with_a_message(api, name, body, status, message):
    client, _ = api
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert message in err["detail"], err
    assert err["code"] in ("invalid_json", "validation_error", "invalid_request")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/jobs/0123456789abcdef0123456789abcdef", 404, "no job with id"),
        ("/v1/jobs/not-a-job/pareto", 404, "no job with id"),
        ("/v1/jobs/not-a-job/trials", 404, "no job with id"),
        ("/v1/jobs/not-a-job/model", 404, "no job with id"),
        ("/v1/jobs?status=done", 422, "'queued', 'running', 'succeeded', 'failed' or 'cancelled'"),
        ("/v1/jobs?limit=0", 422, "query.limit"),
        ("/v1/jobs?limit=many", 422, "query.limit"),
        ("/v1/jobs?offset=-1", 422, "query.offset"),
        ("/v1/nothing", 404, "no route GET /v1/nothing"),
    ],
)
def test_bad_reads_are_4xx(api, path, status, message):
    client, _ = api
    r = client.get(path)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


@pytest.mark.parametrize(
    "candidate",
    ["..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "x" * 16],
)
def test_path_like_candidate_ids_never_touch_the_filesystem(api, finished, candidate):
    import http.client

    client, _ = api
    conn = http.client.HTTPConnection(client.base_url.host, client.base_url.port, timeout=10)
    conn.request("GET", f"/v1/jobs/{finished['id']}/models/{candidate}")  # sent as is, not normalised
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status in (404, 422), body
    assert body["detail"]


def test_service_keeps_serving_after_bad_input(api):
    client, _ = api
    for body in ("{", "null", '{"space": 1}', "\x00\xff"):
        client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/v1/jobs", json=GOOD).status_code == 202


def test_job_and_list_shapes(api, finished):
    client, _ = api
    page = client.get("/v1/jobs", params={"limit": 1}).json()
    assert page["total"] >= 1 and len(page["items"]) == 1 and page["limit"] == 1
    if page["total"] > 1:
        assert page["next"] == "/v1/jobs?limit=1&offset=1"
    job = client.get(f"/v1/jobs/{finished['id']}").json()
    assert job["spec"]["space"] == "mlp_digits" and job["links"]["self"] == f"/v1/jobs/{finished['id']}"


def test_catalog_health_and_docs(api):
    client, _ = api
    spaces = {s["name"]: s for s in client.get("/v1/spaces").json()}
    assert {"mlp_digits", "resnet_mnist"} <= set(spaces) and spaces["mlp_digits"]["size"] > 1
    assert spaces["resnet_mnist"]["model"] == "nasprune.models.resnet_mnist:resnet_mnist"  # what it is derived from
    devices = client.get("/v1/devices").json()
    assert devices[0]["name"] == "local-cpu" and devices[0]["builtin"]
    assert client.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok", "mlflow": "ok"}}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/models/{candidate_id}" in schema["paths"]
    ok = schema["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"] == "#/components/schemas/JobPublic"


def test_device_upload_is_validated(api):
    client, _ = api
    r = client.post("/v1/devices", params={"name": "Bad Name"}, json={})
    assert r.status_code == 422 and "query.name" in r.json()["detail"]
    r = client.post("/v1/devices", params={"name": "local-cpu"}, json={})
    assert r.status_code == 422 and "built-in" in r.json()["detail"]
    r = client.post("/v1/devices", params={"name": "phone"}, json=[1, 2])
    assert r.status_code == 422 and "JSON object" in r.json()["detail"]
    r = client.post("/v1/devices", params={"name": "phone"}, json={"not": "a table"})
    assert r.status_code == 422 and "latency table" in r.json()["detail"], r.text
    assert "phone" not in [d["name"] for d in client.get("/v1/devices").json()]


def test_unreachable_budget_names_the_minimum(api, monkeypatch):
    client, app = api
    app.state.services.catalog.forget()  # listings read before remember that no table is built
    calls = []

    def built_table_range(space, device, data_dir, precision="fp32"):  # as if resnet_mnist's table were built
        from nasprune.budgets import LatencyRange

        calls.append((space, device))
        built = space == "resnet_mnist" and precision == "fp32"
        return LatencyRange(space, device, 0.75, 3.0) if built else LatencyRange(space, device)

    monkeypatch.setattr("nasprune.service.api.catalog.cached_latency_range", built_table_range)
    r = client.post("/v1/jobs", json={**GOOD, "space": "resnet_mnist", "latency_budget_ms": 0.5})
    assert r.status_code == 422
    err = r.json()
    assert err["code"] == "budget_unreachable" and err["min_latency_ms"] == 0.75 and "0.75 ms" in err["detail"]
    assert client.post("/v1/jobs", json={**GOOD, "space": "resnet_mnist", "latency_budget_ms": 0.8}).status_code == 202
    assert calls == [("resnet_mnist", "local-cpu")]  # the minimum is remembered


def test_request_body_limit(api):
    client, _ = api
    r = client.post("/v1/devices", params={"name": "big"}, content=b"{" + b" " * (65 * 2**20) + b"}")
    assert r.status_code == 413


# servers of their own ----------------------------------------------------------------------------


def test_token_auth(settings):
    s = settings.model_copy(update={"api_token": __import__("pydantic").SecretStr("s3cret")})
    with running(s, instant_runner) as (client, _):
        r = client.get("/v1/jobs")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["detail"]
        r = client.post("/v1/jobs", json=GOOD, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "not valid" in r.json()["detail"]
        assert client.get("/v1/jobs", headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        assert client.get("/v1/spaces", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        r = client.post("/v1/jobs", json=GOOD, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202


def test_queue_full_is_429(settings):
    s = settings.model_copy(update={"max_queued_jobs": 2})
    with running(s, start_workers=False) as (client, _):
        assert [client.post("/v1/jobs", json=GOOD).status_code for _ in range(2)] == [202, 202]
        r = client.post("/v1/jobs", json=GOOD)
        assert r.status_code == 429 and r.headers["retry-after"] == "30"
        assert "queue is full (2 jobs queued, limit 2)" in r.json()["detail"]
        assert client.get("/v1/jobs").json()["total"] == 2


def test_cancel_queued_job(settings):
    with running(settings, start_workers=False) as (client, _):
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["finished_at"] and job["started_at"] is None
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        r = client.get(f"/v1/jobs/{job_id}/pareto")
        assert r.status_code == 409 and "without a search result" in r.json()["detail"]
        assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_cancel_running_job_keeps_its_trials(settings):
    runner = GatedRunner()
    with running(settings, runner) as (client, _):
        job_id = client.post("/v1/jobs", json={**GOOD, "n_trials": 1000}).json()["id"]
        runner.release.set()
        assert runner.running.acquire(timeout=10)
        wait_for(client, job_id, ("running",), until=lambda job: job["progress"]["n_done"] > 0)
        r = client.get(f"/v1/jobs/{job_id}/model")
        assert r.status_code == 409 and "is running" in r.json()["detail"]
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "running"
        # 1000 trials take the runner 50 s: cancelled with fewer done proves it stopped early, on a busy
        # machine as on a quiet one (no bound on how fast)
        job = wait_for(client, job_id, ("cancelled",), timeout_s=45)
        assert 0 < job["progress"]["n_done"] < 1000 and "cancelled after" in job["progress"]["message"]
        front = client.get(f"/v1/jobs/{job_id}/pareto").json()
        assert front["status"] == "cancelled" and 0 < front["n_trials"] < 1000
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_status_changes_at_once_when_the_job_does(settings, monkeypatch):
    # With a cache that would otherwise answer for a minute, only its invalidation shows the changes.
    monkeypatch.setattr("nasprune.service.api.status_cache.STATUS_CACHE_S", 60.0)
    monkeypatch.setattr("nasprune.service.api.status_cache.STATUS_REFRESH_S", 60.0)
    runner = GatedRunner(step_s=0.01)
    with running(settings, runner) as (client, app):
        ids = [client.post("/v1/jobs", json={**GOOD, "seed": i}).json()["id"] for i in range(2)]
        assert runner.running.acquire(timeout=10)
        assert [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids] == ["running", "queued"]
        assert client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200
        assert client.get(f"/v1/jobs/{ids[1]}").json()["status"] == "cancelled"
        runner.release.set()
        pool = app.state.services.pool
        deadline = time.monotonic() + 10
        while pool.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get(f"/v1/jobs/{ids[0]}").json()["status"] == "succeeded"


def test_failed_job_reports_its_error(settings):
    with running(settings, failing_runner) as (client, _):
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        job = wait_for(client, job_id, ("failed",))
        assert "supernet checkpoint is corrupt" in job["error"]
        r = client.get(f"/v1/jobs/{job_id}/model")
        assert r.status_code == 409 and "supernet checkpoint is corrupt" in r.json()["detail"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_jobs_share_the_pool_in_submission_order(settings):
    runner = GatedRunner(step_s=0.02)
    s = settings.model_copy(update={"workers": 2})
    with running(s, runner) as (client, _):
        ids = [client.post("/v1/jobs", json={**GOOD, "seed": i}).json()["id"] for i in range(4)]
        assert runner.running.acquire(timeout=10) and runner.running.acquire(timeout=10)
        time.sleep(0.3)
        statuses = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
        assert statuses == ["running", "running", "queued", "queued"]
        runner.release.set()
        started = [wait_for(client, i, ("succeeded",))["started_at"] for i in ids]
        assert started == sorted(started)  # claimed oldest first
        assert set(runner.started[:2]) == set(ids[:2])


def test_restart_requeues_jobs_left_running(settings):
    settings.prepare()
    store = JobStore(settings.db_url)
    store.migrate()
    crashed = store.create(SearchJob(**GOOD))
    assert store.claim_next("a-server-that-crashed").status is JobStatus.RUNNING
    store.close()
    with running(settings, instant_runner) as (client, _):
        job = wait_for(client, crashed.id, ("succeeded",))
        assert job["attempts"] == 2 and job["progress"]["n_done"] == GOOD["n_trials"]


def test_shutdown_requeues_running_jobs(settings):
    runner = GatedRunner()
    with running(settings, runner) as (client, _):
        job_id = client.post("/v1/jobs", json={**GOOD, "n_trials": 1000}).json()["id"]
        assert runner.running.acquire(timeout=10)
    store2 = JobStore(settings.db_url)
    rec = store2.get(job_id)
    assert rec.status is JobStatus.QUEUED and rec.attempts == 0 and rec.owner is None
    store2.close()


def test_readyz_reports_an_unreachable_mlflow(settings):
    s = settings.model_copy(update={"tracking_uri": "http://127.0.0.1:9"})
    with running(s, start_workers=False) as (client, _):
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["checks"]["database"] == "ok" and "unreachable" in body["checks"]["mlflow"]


def test_trials_come_from_the_optuna_storage(settings):
    import optuna

    from nasprune.search.study import make_storage

    def runner(job, ctx):
        study = optuna.create_study(
            study_name=ctx.job_id,
            storage=make_storage(ctx.storage_url),
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )
        for i in range(3):
            t = study.ask()
            t.suggest_int("width", 8, 64, step=8)
            t.set_user_attr("subnet_key", f"{i:016x}")
            study.tell(t, [0.5 + i / 10, math.inf if i == 2 else 1.0 + i])
        return instant_runner(job, ctx)

    with running(settings, runner) as (client, _):
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        wait_for(client, job_id, ("succeeded",))
        page = client.get(f"/v1/jobs/{job_id}/trials", params={"limit": 2}).json()
        assert page["total"] == 3 and [t["number"] for t in page["items"]] == [0, 1]
        assert page["next"] == f"/v1/jobs/{job_id}/trials?limit=2&offset=2"
        assert page["items"][1]["state"] == "complete" and page["items"][1]["user_attrs"]["subnet_key"]
        last = client.get(page["next"]).json()["items"][0]
        assert last["values"] == [0.7, None]  # infinity is not JSON: null


def test_service_on_postgresql(settings, pg_server):
    s = settings.model_copy(update={"database_url": pg_server.create_database()})
    assert s.trial_storage_url == s.db_url
    with running(s, instant_runner) as (client, _):
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        assert wait_for(client, job_id, ("succeeded",))["progress"]["n_done"] == 5
        assert client.get(f"/v1/jobs/{job_id}/model").content == FAKE_ONNX


def test_client_errors_do_not_crash_the_server_on_bad_content_type(api):
    client, _ = api
    r = client.post("/v1/jobs", content=b"space=mlp_digits", headers={"Content-Type": "text/plain"})
    assert 400 <= r.status_code < 500
    assert client.get("/healthz").status_code == 200
