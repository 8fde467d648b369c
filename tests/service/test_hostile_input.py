"""Hostile and sloppy input through a real uvicorn server on loopback (issue 14, points 2, 3, 5, 6, 7, 9):
bodies past the size limit without a Content-Length, corrupt latency tables, loose types, bad JSON,
out-of-range seeds and offsets, auth before parsing, a clean shutdown, and an OpenAPI document that
says what the server does."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime

import pytest
from pydantic import SecretStr

from nasprune.settings import Settings
from tests.service.server import running, wait_for

GOOD = {"space": "mlp_digits", "latency_budget_ms": 2.0, "n_trials": 5}
MIB = 2**20
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A server that queues jobs and runs none (limit 50 trials per job)."""
    s = Settings(data_dir=tmp_path_factory.mktemp("hostile") / "data", poll_s=0.05, max_trials_per_job=50)
    with running(s, start_workers=False) as (client, app):
        yield client, app


def chunks(n_mib: int, first: bytes = b"{", fill: bytes = b" "):
    """A body of about ``n_mib`` MiB sent chunked (a generator: httpx sends no Content-Length)."""
    yield first
    for _ in range(n_mib):
        yield fill * MIB


# point 2: the size limit counts the bytes read --------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/devices?name=big", "/v1/jobs"])
def test_chunked_body_over_the_limit_is_413(api, path):
    client, _ = api
    r = client.post(path, content=chunks(66), headers=JSON, timeout=60)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413, r.text[:300]
    err = r.json()
    assert err["code"] == "payload_too_large" and f"{64 * MIB} bytes" in err["detail"], err
    assert client.get("/healthz").status_code == 200


def test_chunked_body_under_the_limit_is_served(api):
    client, _ = api
    body = json.dumps(GOOD).encode()
    r = client.post("/v1/jobs", content=iter([body[:10], body[10:]]), headers=JSON)
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 202, r.text


def test_announced_oversize_is_413_before_reading(api):
    client, _ = api
    r = client.post("/v1/jobs", content=b"{" + b" " * (64 * MIB) + b"}", headers=JSON, timeout=60)
    assert r.status_code == 413 and "Content-Length" in r.json()["detail"]


# point 3: latency tables are checked before they are stored --------------------------------------


@pytest.fixture(scope="module")
def table_json():
    """A complete, valid table for mlp_digits made from invented timings (no measuring)."""
    from nasprune.latency.device import DeviceProfile
    from nasprune.latency.ops import all_ops
    from nasprune.latency.profile import ProfileSettings
    from nasprune.latency.table import LatencyTable
    from nasprune.latency.timing import Timing
    from nasprune.registry import load_space

    space = load_space("mlp_digits")
    timings = {k: Timing(0.01, 0.012, 10) for k in all_ops(space)}
    table = LatencyTable.from_measurements(
        space, DeviceProfile.local(), timings, Timing(0.005, 0.006, 10), ProfileSettings()
    )
    return json.loads(table.model_dump_json())


def changed(raw: dict, part: str, field: str, value) -> dict:
    raw = json.loads(json.dumps(raw))
    (raw["entries"][0] if part == "entry" else raw[part])[field] = value
    return raw


HOSTILE_TABLES = [
    ("entry", "median_ms", math.nan, "entries.0.median_ms: Input should be a finite number"),
    ("entry", "median_ms", math.inf, "entries.0.median_ms: Input should be a finite number"),
    ("entry", "p90_ms", math.inf, "entries.0.p90_ms: Input should be a finite number"),
    ("entry", "median_ms", -1.0, "entries.0.median_ms: Input should be greater than or equal to -0.001"),
    ("entry", "p90_ms", -0.5, "entries.0.p90_ms"),
    ("entry", "median_ms", 1.0, "is below median_ms 1"),
    ("correction", "intercept_ms", -1000.0, "predicts -999.9"),
    ("correction", "intercept_ms", math.nan, "correction.intercept_ms: Input should be a finite number"),
    ("correction", "scale", math.inf, "correction.scale: Input should be a finite number"),
    ("correction", "overhead_ms", -1.0, "correction.overhead_ms"),
    ("correction", "cache_ms_per_mweight", math.nan, "correction.cache_ms_per_mweight"),
]


@pytest.mark.parametrize(("part", "field", "value", "message"), HOSTILE_TABLES, ids=lambda v: str(v)[:14])
def test_hostile_latency_tables_are_422_and_not_stored(api, table_json, part, field, value, message):
    client, _ = api
    body = json.dumps(changed(table_json, part, field, value))  # NaN and Infinity as Python writes them
    r = client.post("/v1/devices", params={"name": "evil"}, content=body, headers=JSON)
    assert r.status_code == 422, r.text[:300]
    err = r.json()
    assert err["code"] == "latency_table_error" and message in err["detail"], err["detail"]
    assert "evil" not in [d["name"] for d in client.get("/v1/devices").json()]


def test_a_sound_table_is_stored(api, table_json):
    client, _ = api
    r = client.post("/v1/devices", params={"name": "phone"}, json=table_json)
    assert r.status_code == 201, r.text[:300]
    assert r.json()["spaces"] == ["mlp_digits"]


def test_tables_read_from_disk_are_checked_too(table_json):
    from nasprune.errors import LatencyTableError
    from nasprune.latency.table import Entry, LatencyTable
    from nasprune.latency.timing import Timing

    text = json.dumps(changed(table_json, "correction", "intercept_ms", -1000.0))
    with pytest.raises(LatencyTableError, match="every predicted latency must be positive"):
        LatencyTable.from_json(text, "phone.json")
    text = json.dumps(changed(table_json, "entry", "median_ms", math.nan))
    with pytest.raises(LatencyTableError, match="finite"):
        LatencyTable.from_json(text, "phone.json")
    # measurement noise a hair below zero is stored as 0, and a file holding it still loads
    op = LatencyTable.model_validate(table_json).entries[0].op
    assert Entry.of(op, Timing(-0.0004, -0.0001, 5)).median_ms == 0.0
    assert LatencyTable.model_validate(changed(table_json, "entry", "median_ms", -0.0005)).min_latency() > 0


# point 6 and 7: strict fields, bounded seeds and offsets ----------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"latency_budget_ms": True}, "latency_budget_ms"),
        ({"latency_budget_ms": "2.0"}, "latency_budget_ms"),
        ({"n_trials": "10"}, "n_trials"),
        ({"n_trials": True}, "n_trials"),
        ({"n_trials": 10.0}, "n_trials"),
        ({"seed": "1"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 10**30}, "seed"),
        ({"verify_top_k": False}, "verify_top_k"),
        ({"constraints": {"max_params": "5"}}, "constraints.max_params"),
        ({"timeout_s": True}, "timeout_s"),
    ],
    ids=lambda v: json.dumps(v)[:30],
)
def test_loose_or_out_of_range_fields_are_422(api, change, field):
    client, _ = api
    r = client.post("/v1/jobs", json={**GOOD, **change})
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["code"] == "validation_error" and err["errors"][0]["field"] == field, err


def test_edge_values_are_accepted(api):
    client, _ = api
    for change in ({"seed": 0}, {"seed": 2**32 - 1}, {"latency_budget_ms": 2}, {"timeout_s": 5}):
        r = client.post("/v1/jobs", json={**GOOD, **change})
        assert r.status_code == 202, (change, r.text)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/x/trials"])
@pytest.mark.parametrize("offset", [2**63, 2**31, 10**30])
def test_huge_offsets_are_422(api, path, offset):
    client, _ = api
    r = client.get(path, params={"offset": offset})
    assert r.status_code == 422 and "query.offset" in r.json()["detail"], r.text
    assert client.get("/v1/jobs", params={"offset": 2**31 - 1}).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"space": "mlp_digits\xff\xfe", "latency_budget_ms": 2}', "invalid UTF-8 at byte 21"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"space": ', "Expecting value"),
        (b"\xef\xbb\xbf{}", "Unexpected UTF-8 BOM"),
    ],
    ids=["utf8", "deep", "truncated", "bom"],
)
def test_unparseable_bodies_are_invalid_json_with_a_reason(api, body, reason):
    client, _ = api
    r = client.post("/v1/jobs", content=body, headers=JSON)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["code"] == "invalid_json" and reason in err["detail"], err


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_sent_as_json_is_415(api, content_type):
    client, _ = api
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/jobs", content=json.dumps(GOOD), headers=headers)
    assert r.status_code == 415, r.text
    err = r.json()
    assert err["code"] == "unsupported_media_type" and "Content-Type: application/json" in err["detail"]
    assert (content_type or "no Content-Type") in err["detail"]


def test_auth_is_checked_before_the_body(settings):
    s = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with running(s, start_workers=False) as (client, _):
        for body in (b'{"space": ', b"\xff", b"[" * 100_000):
            r = client.post("/v1/jobs", content=body, headers=JSON)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
        r = client.post("/v1/devices?name=x", content=chunks(66), headers=JSON, timeout=60)
        assert r.status_code == 401
        r = client.post("/v1/jobs", content=b'{"space": ', headers={**JSON, "Authorization": "Bearer s3cret"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_json"
        r = client.post("/v1/jobs", json=GOOD, headers={"Authorization": "bearer s3cret"})
        assert r.status_code == 202, r.text


# point 5: shutdown ------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_shutdown_is_clean_after_trials_were_served(settings):
    assert settings.trial_storage_url.startswith("journal:")  # the storage whose close used to fail
    records = Records()
    with running(settings, start_workers=False) as (client, app):
        logging.getLogger("uvicorn.error").addHandler(records)  # uvicorn configured its loggers by now
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        r = client.get(f"/v1/jobs/{job_id}/trials")
        assert r.status_code == 200 and r.json()["total"] == 0
    logging.getLogger("uvicorn.error").removeHandler(records)
    assert not [m for m in records.messages if "shutdown failed" in m.lower()], records.messages
    services = app.state.services
    assert services.jobs.trials_reader._storage is None
    assert services.store.engine.pool.checkedin() == 0  # the job store was closed (engine disposed)


SIGTERM_DRIVER = """
import signal
import socket
from nasprune.settings import Settings
from nasprune.service.api.app import create_app
from nasprune.service.api.server import make_server

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
app = create_app(Settings(), start_workers=False)
# uvicorn passes the SIGTERM on to the handler it found once it has shut down: see the end, then exit
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM passed on", flush=True))
make_server(app, "127.0.0.1", 0, log_level="info").run(sockets=[sock])
print("job store connections left:", app.state.services.store.engine.pool.checkedin(), flush=True)
"""


def test_sigterm_after_trials_is_a_clean_shutdown(tmp_path):
    """``nasprune serve``'s way of running: uvicorn in the main thread, stopped by SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}
    env["NASPRUNE_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_DRIVER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(300):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    __import__("time").sleep(0.05)
            job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
            assert client.get(f"/v1/jobs/{job_id}/trials").status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Application shutdown complete" in err and "shutdown failed" not in err, err[-2000:]
    assert "job store connections left: 0" in out, (out, err[-2000:])
    assert proc.returncode == 0, err[-2000:]


# point 9: the OpenAPI document ------------------------------------------------------------------


def test_openapi_declares_what_the_server_sends(api):
    client, _ = api
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["properties"]["detail"]["type"] == "string"
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "422" in op["responses"]:
                assert op["responses"]["422"]["content"]["application/json"]["schema"] == error_ref, (method, path)
    submit = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"400", "413", "415", "422", "429"} <= set(submit)
    job = schemas["JobCreate"]["properties"]
    assert job["n_trials"]["maximum"] == 50  # this server's max_trials_per_job
    assert job["seed"]["minimum"] == 0 and job["seed"]["maximum"] == 2**32 - 1
    assert "securitySchemes" not in doc.get("components", {})  # no token configured
    assert all("security" not in op for item in doc["paths"].values() for op in item.values())
    assert all("401" not in op["responses"] for item in doc["paths"].values() for op in item.values())
    r = client.post("/v1/jobs", json={**GOOD, "n_trials": 51})
    assert r.status_code == 422  # the declared maximum is the real one


def test_openapi_declares_bearer_auth_only_with_a_token(settings):
    s = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with running(s, start_workers=False) as (client, _):
        doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    listing = doc["paths"]["/v1/jobs"]["get"]
    assert listing["security"] == [{"HTTPBearer": []}] and "401" in listing["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_trial_timestamps_have_a_timezone(settings):
    import optuna

    from nasprune.search.study import make_storage
    from tests.service.fakes import instant_runner

    def runner(job, ctx):
        study = optuna.create_study(
            study_name=ctx.job_id, storage=make_storage(ctx.storage_url), directions=["maximize", "minimize"]
        )
        study.tell(study.ask(), [0.5, 1.0])
        return instant_runner(job, ctx)

    with running(settings, runner) as (client, _):
        job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
        wait_for(client, job_id, ("succeeded",))
        trial = client.get(f"/v1/jobs/{job_id}/trials").json()["items"][0]
    for key in ("started_at", "completed_at"):
        moment = datetime.fromisoformat(trial[key])
        assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0, trial[key]
        assert abs((datetime.now(moment.tzinfo) - moment).total_seconds()) < 120
