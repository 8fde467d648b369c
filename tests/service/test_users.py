"""Users and keys, quotas and the audit trail of a shared service (NASPRUNE_AUTH=users), on real uvicorn servers.

Key handling is checked where a key could leak: the service's logs, the job store and the data dir
(job records, the MLflow store), what a job's runner is given (all it could log to MLflow), and the
environment of a process a job starts.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from contextlib import ExitStack

import httpx
import numpy as np
import pytest

from nasprune.service.api.app import create_app
from nasprune.service.api.server import serve_in_thread
from nasprune.settings import Settings
from tests.data.helpers import blobs
from tests.service.fakes import GatedRunner, instant_runner, result_for
from tests.service.server import running, wait_for

GOOD = {"space": "mlp_digits", "latency_budget_ms": 2.0, "n_trials": 3}
OCTET = {"content-type": "application/octet-stream"}


def users_settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", poll_s=0.05, heartbeat_s=0.5, auth="users", **kw)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def admin_key(app) -> str:
    users = app.state.services.users
    users.add_user("root", "admin")
    return users.create_key("root")[1]


def add(client, admin: str, name: str, **kw) -> str:
    """A user and a key through the admin routes; returns the key."""
    r = client.post("/v1/users", json={"name": name, **kw}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/users/{name}/keys", json={}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    return r.json()["key"]


def npz(x, y) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def test_single_token_mode_stays_the_default(tmp_path):
    """A plain local server has no accounts: no key needed, one user (an admin), the admin routes say why not."""
    with running(Settings(data_dir=tmp_path / "data", poll_s=0.05), instant_runner) as (client, _):
        assert client.get("/v1/me").json() == {"mode": "token", "name": None, "role": "admin", "team": None}
        r = client.post("/v1/jobs", json=GOOD)
        assert r.status_code == 202
        job = wait_for(client, r.json()["id"], ("succeeded",))
        assert job["user"] is None
        r = client.get("/v1/users")
        assert r.status_code == 409 and r.json()["code"] == "single_token_mode"
        assert client.get("/v1/audit").json()["items"][0]["action"] == "job.submit"  # the one user is the admin


def test_users_mode_refuses_the_shared_token(tmp_path):
    with pytest.raises(ValueError, match="NASPRUNE_AUTH=users takes API keys"):
        Settings(data_dir=tmp_path, auth="users", api_token="s3cret")


def test_revoking_and_disabling_take_effect_at_once_in_every_process(tmp_path, db_url):
    """Two API servers on one database: a key revoked (or a user disabled) through one is refused by the other
    at its next request (no cache), and a new key works on both."""
    s = users_settings(tmp_path, database_url=db_url)
    with ExitStack() as stack:
        apps = [create_app(s, start_workers=False) for _ in range(2)]
        urls = [stack.enter_context(serve_in_thread(a)) for a in apps]
        a, b = (stack.enter_context(httpx.Client(base_url=u, timeout=10)) for u in urls)
        root = admin_key(apps[0])
        key = add(a, root, "alice")
        assert b.get("/v1/me", headers=bearer(key)).json()["name"] == "alice"
        key_id = key.split("_")[1]
        assert a.delete(f"/v1/keys/{key_id}", headers=bearer(root)).json()["revoked_at"]
        r = b.get("/v1/jobs", headers=bearer(key))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        key2 = b.post("/v1/users/alice/keys", json={"label": "second"}, headers=bearer(root)).json()["key"]
        assert a.get("/v1/me", headers=bearer(key2)).status_code == 200
        assert b.patch("/v1/users/alice", json={"disabled": True}, headers=bearer(root)).json()["disabled"]
        r = a.get("/v1/me", headers=bearer(key2))
        assert r.status_code == 401 and "disabled" in r.json()["detail"]
        assert a.get("/v1/me", headers=bearer(key2[:-1] + ("A" if key2[-1] != "A" else "B"))).status_code == 401
        assert a.patch("/v1/users/alice", json={"disabled": False}, headers=bearer(root)).status_code == 200
        assert b.get("/v1/me", headers=bearer(key2)).status_code == 200
        keys = a.get("/v1/users/alice/keys", headers=bearer(root)).json()
        assert [k["id"] for k in keys] == [key_id, key2.split("_")[1]] and all("key" not in k for k in keys)


def test_queued_quota_is_atomic_and_says_limit_and_use(tmp_path, db_url):
    """A user's queued jobs are capped; six submissions at once with room for three: exactly three get in."""
    s = users_settings(tmp_path, database_url=db_url, user_max_queued=3)
    with running(s, start_workers=False) as (client, app):
        root = admin_key(app)
        alice, bob = add(client, root, "alice"), add(client, root, "bob")
        codes: list[int] = []

        def submit() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
                codes.append(c.post("/v1/jobs", json=GOOD, headers=bearer(alice)).status_code)

        threads = [threading.Thread(target=submit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(codes) == [202] * 3 + [429] * 3
        r = client.post("/v1/jobs", json=GOOD, headers=bearer(alice))
        body = r.json()
        assert r.status_code == 429 and body["code"] == "quota_exceeded" and (body["limit"], body["current"]) == (3, 3)
        assert "queued jobs of user 'alice': the limit is 3, current use 3" in body["detail"]
        assert client.post("/v1/jobs", json=GOOD, headers=bearer(bob)).status_code == 202  # bob has his own
        client.patch("/v1/users/alice", json={"max_queued": 4}, headers=bearer(root))
        assert client.post("/v1/jobs", json=GOOD, headers=bearer(alice)).status_code == 202
        use = client.get("/v1/users/alice", headers=bearer(root)).json()["usage"]
        assert use == {"running": 0, "queued": 4, "storage_bytes": 0}


def test_running_quota_lets_other_users_through(tmp_path):
    """alice may run one job at a time: with two workers, her second job waits and bob's starts."""
    runner = GatedRunner(step_s=0.02)
    with running(users_settings(tmp_path, workers=2), runner) as (client, app):
        root = admin_key(app)
        alice, bob = add(client, root, "alice", max_running=1), add(client, root, "bob")
        a1, a2 = (client.post("/v1/jobs", json=GOOD, headers=bearer(alice)).json()["id"] for _ in range(2))
        b1 = client.post("/v1/jobs", json=GOOD, headers=bearer(bob)).json()["id"]
        assert runner.running.acquire(timeout=20) and runner.running.acquire(timeout=20)
        assert runner.started == [a1, b1]
        assert client.get(f"/v1/jobs/{a2}", headers=bearer(alice)).json()["status"] == "queued"
        runner.release.set()
        client.headers.update(bearer(alice))
        assert wait_for(client, a2, ("succeeded",))["user"] == "alice"


def _leftovers(settings) -> list[str]:
    root = settings.data_dir / "datasets"
    return sorted(p.name for p in root.rglob("*")) if root.is_dir() else []


def test_storage_quota_on_bytes_written(tmp_path):
    """Uploads past the storage quota are refused (413, with the limit and the use) by Content-Length, by
    chunked bodies, and on the bytes the dataset takes once stored; nothing of them stays on disk; two
    uploads that each fit alone but not together: one is refused."""
    s = users_settings(tmp_path)
    with running(s, instant_runner) as (client, app):
        root = admin_key(app)
        alice = add(client, root, "alice")
        x, y = blobs(shape=(64,), k=10, n_per_class=12)  # 120 samples of 64 features
        small = npz(x, y)
        r = client.post(
            "/v1/datasets", params={"name": "first", "format": "npz"}, content=small, headers={**bearer(alice), **OCTET}
        )
        assert r.status_code == 201, r.text
        stored = r.json()["n_bytes"]
        use = client.get("/v1/users/alice", headers=bearer(root)).json()["usage"]["storage_bytes"]
        assert use == stored
        limit = stored + stored // 2  # room for half a dataset more
        client.patch("/v1/users/alice", json={"max_storage_bytes": limit}, headers=bearer(root))
        before = _leftovers(s)

        big = npz(*blobs(shape=(64,), k=10, n_per_class=60))  # ~155 kB
        r = client.post(
            "/v1/datasets", params={"name": "big", "format": "npz"}, content=big, headers={**bearer(alice), **OCTET}
        )
        body = r.json()
        assert r.status_code == 413 and body["code"] == "quota_exceeded", r.text
        assert (body["limit"], body["current"]) == (limit, stored) and "nothing of it was kept" in body["detail"]

        def chunks():
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = client.post(
            "/v1/datasets",
            params={"name": "chunked", "format": "npz"},
            content=chunks(),
            headers={**bearer(alice), **OCTET},
        )
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded", r.text

        # a body that fits, but stored as float32 it takes four times its bytes: refused on what was written
        xb = (np.clip(x, 0, 9) * 25).astype(np.uint8)
        r = client.post(
            "/v1/datasets",
            params={"name": "widened", "format": "npz"},
            content=npz(xb, y),
            headers={**bearer(alice), **OCTET},
        )
        assert len(npz(xb, y)) < limit - stored
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded", r.text
        assert "needs" in r.json()["detail"]

        r = client.post(
            "/v1/models",
            params={"architecture": "torchvision:resnet18", "num_classes": 10, "input_shape": "3,32,32"},
            content=chunks(),
            headers={**bearer(alice), **OCTET},
        )
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded", r.text
        assert not any(p.name.startswith(".upload") for p in (s.data_dir / "models").glob("*"))

        assert _leftovers(s) == before
        names = [d["name"] for d in client.get("/v1/datasets", headers=bearer(alice)).json() if not d["builtin"]]
        assert names == ["first"]
        assert client.get("/v1/users/alice", headers=bearer(root)).json()["usage"]["storage_bytes"] == stored

        # two uploads at once, each fitting alone (room for one more): exactly one is stored
        client.patch("/v1/users/alice", json={"max_storage_bytes": 2 * stored + stored // 2}, headers=bearer(root))
        twin = npz(x.astype(np.float32), y)  # its body is about what it takes stored
        codes: list[int] = []

        def upload(name: str) -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
                r = c.post(
                    "/v1/datasets",
                    params={"name": name, "format": "npz"},
                    content=twin,
                    headers={**bearer(alice), **OCTET},
                )
                codes.append(r.status_code)

        threads = [threading.Thread(target=upload, args=(n,)) for n in ("twin_a", "twin_b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(codes) == [201, 413]
        assert client.get("/v1/users/alice", headers=bearer(root)).json()["usage"]["storage_bytes"] == 2 * stored


def test_audit_trail_says_who_did_what(tmp_path):
    with running(users_settings(tmp_path), instant_runner) as (client, app):
        root = admin_key(app)
        alice = add(client, root, "alice")
        job = client.post("/v1/jobs", json=GOOD, headers=bearer(alice)).json()["id"]
        client.headers.update(bearer(alice))
        wait_for(client, job, ("succeeded",))
        assert client.get(f"/v1/jobs/{job}/model").status_code == 200
        assert client.post(f"/v1/jobs/{job}/cancel").status_code == 409
        queued = client.post("/v1/jobs", json={**GOOD, "n_trials": 1}).json()["id"]
        client.post(f"/v1/jobs/{queued}/cancel")
        assert client.get("/v1/audit").status_code == 403  # members do not read it
        client.headers.pop("Authorization")
        page = client.get("/v1/audit", params={"user": "alice", "limit": 100}, headers=bearer(root)).json()
        actions = [(e["action"], e["target"]) for e in page["items"]]
        assert ("job.submit", f"job:{job}") in actions and ("job.download", f"job:{job}") in actions
        assert ("job.cancel", f"job:{job}") in actions and ("job.cancel", f"job:{queued}") in actions
        assert ("key.use", f"key:{alice.split('_')[1]}") in actions
        admin_actions = {
            e["action"] for e in client.get("/v1/audit", params={"user": "root"}, headers=bearer(root)).json()["items"]
        }
        assert {"user.add", "key.create"} <= admin_actions
        assert all(alice not in str(e) for e in page["items"])


def test_keys_appear_in_no_log_record_file_or_child_environment(tmp_path, caplog):
    """The key is in the request only: not in the service's logs (access log included), the job store, the
    data dir (job folders, the MLflow store), what the job's runner receives (what it could log to MLflow as
    tags or params), or the environment of a process the job starts."""
    seen: dict[str, str] = {}

    def runner(job, ctx):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(dict(os.environ))"], capture_output=True, text=True, check=True
        )
        seen["child_env"] = child.stdout
        seen["own_env"] = repr(dict(os.environ))
        seen["given"] = repr(job) + repr(ctx)
        return result_for(job, ctx, job.n_trials)

    caplog.set_level(logging.DEBUG)
    s = users_settings(tmp_path)
    app = create_app(s, runner)
    from nasprune.service.api.server import make_server  # the access log on, as 'nasprune serve' runs it

    server = make_server(app, "127.0.0.1", 0, access_log=True, log_level="debug")
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")]  # they do not propagate
    for logger in uvicorn_loggers:
        logger.addHandler(caplog.handler)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server_started(server)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            root = admin_key(app)
            key = add(client, root, "alice")
            job = client.post("/v1/jobs", json=GOOD, headers=bearer(key)).json()["id"]
            client.headers.update(bearer(key))
            wait_for(client, job, ("succeeded",))
            client.get(f"/v1/jobs/{job}/model")
            client.get("/v1/jobs", params={"limit": 5})
            client.get("/v1/me", headers=bearer(key[:-2] + "xx"))  # a wrong key: refused, not logged either
    finally:
        server.should_exit = True
        thread.join(30)
        for logger in uvicorn_loggers:
            logger.removeHandler(caplog.handler)
    secrets_ = [key, key.split("_", 2)[2], root, root.split("_", 2)[2]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/v1/jobs" in logged and "401" in logged  # the access log was on, the refused request in it
    for secret in secrets_:
        assert secret not in logged
        for name in ("child_env", "own_env", "given"):
            assert secret not in seen[name], name
        for path in s.data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def server_started(server, timeout_s: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.started


def test_cli_manages_users_on_the_database_and_through_the_api(tmp_path, capsys, monkeypatch):
    """The first admin is made on the database (no server needed); the rest through the API with its key."""
    from nasprune.cli import main

    s = users_settings(tmp_path)
    data = ["--data-dir", str(s.data_dir)]
    assert main(["users", "add", "root", "--role", "admin", *data]) == 0
    root = capsys.readouterr().out.strip()
    assert root.startswith("nsp_") and len(root.splitlines()) == 1
    with running(s, instant_runner) as (client, _):
        url = ["--url", str(client.base_url)]
        monkeypatch.setenv("NASPRUNE_API_KEY", root)
        assert main(["users", "add", "alice", "--team", "vision", "--max-queued", "2", *url]) == 0
        alice = capsys.readouterr().out.strip()
        assert client.get("/v1/me", headers=bearer(alice)).json() == {
            "mode": "users",
            "name": "alice",
            "role": "member",
            "team": "vision",
        }
        assert main(["users", "list", "--json", *url]) == 0
        listed = {u["name"]: u for u in json.loads(capsys.readouterr().out)}
        assert listed["alice"]["max_queued"] == 2 and listed["root"]["role"] == "admin"
        assert main(["users", "set", "alice", "--priority", "2", "--max-running", "1", *url]) == 0
        capsys.readouterr()
        got = client.get("/v1/users/alice", headers=bearer(root)).json()
        assert (got["priority"], got["max_running"], got["max_queued"]) == (2, 1, 2)
        assert main(["users", "audit", "--user", "root", "--json", *url]) == 0
        assert "user.update" in capsys.readouterr().out
        assert main(["keys", "list", "alice", *url]) == 0
        key_id = alice.split("_")[1]
        assert key_id in capsys.readouterr().out
        assert main(["keys", "revoke", key_id, *url]) == 0
        assert client.get("/v1/me", headers=bearer(alice)).status_code == 401
        assert main(["users", "disable", "alice", *data]) == 0  # on the database, seen by the server at once
        capsys.readouterr()
        assert client.get("/v1/users/alice", headers=bearer(root)).json()["disabled"]
        monkeypatch.setenv("NASPRUNE_API_KEY", alice)
        assert main(["users", "list", *url]) == 2
        assert "revoked" in capsys.readouterr().err
        assert main(["users", "audit", *data]) == 0
        out = capsys.readouterr().out
        assert "key.revoke" in out and "user.add" in out and alice not in out


def test_a_new_device_name_goes_to_one_user(db_url):
    """Two members racing for the same new device name: one gets it, the other is refused (409 name_taken)."""
    from nasprune.service.auth import NameTaken, Principal, Role, UserStore
    from nasprune.service.jobs import JobStore

    store = JobStore(db_url)
    store.migrate()
    users = UserStore(store.engine)
    try:
        who = [Principal(f"u{i}", Role.MEMBER) for i in range(4)]
        won, lost = [], []
        barrier = threading.Barrier(len(who))

        def claim(p: Principal) -> None:
            barrier.wait()
            try:
                users.claim_name("device", "shared-board", p, exists=False)
                won.append(p.name)
            except NameTaken:
                lost.append(p.name)

        threads = [threading.Thread(target=claim, args=(p,)) for p in who]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(lost) == 3
        assert [u for u, _ in users.owners("device", "shared-board")] == won
        assert users.claim_name("device", "shared-board", Principal(won[0], Role.MEMBER), exists=True) is False
        assert users.claim_name("device", "shared-board", Principal("root", Role.ADMIN), exists=True) is False
    finally:
        store.close()
