"""Every route as every role, against another member's resources (NASPRUNE_AUTH=users, real uvicorn on loopback).

alice (member, team ``a``) owns a finished job, a dataset, an uploaded model and a device table. Each
route of the API is tried, for each resource kind it touches, by: no key, a revoked key, the admin,
alice, carol (member, team ``a``), bob (member, no team), vic (viewer, team ``a``) and val (viewer,
no team). Ids are guessed, listed, given in query parameters and in artifact paths, and the proxied
MLflow server is tried too. Every attempt is either allowed (the owner's, a teammate's or an admin's
access, a viewer's read) or denied (401 / 403 / 404 / the name refused), and the suite fails when a
route of the app is not in its table. The closing note counts routes x roles x kinds tried, allowed
and denied.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.routing import APIRoute

from tests.data.helpers import blobs
from tests.service.fakes import instant_runner
from tests.service.server import running, wait_for

OCTET = {"content-type": "application/octet-stream"}
GOOD = {"space": "mlp_digits", "latency_budget_ms": 50.0, "n_trials": 3}
MODEL_JOB = {**GOOD, "space": None, "dataset": "alice_tiles"}  # a job on a model names the data it trains on
MODEL_PARAMS = {"architecture": "torchvision:squeezenet1_1", "num_classes": 10, "input_shape": "3,48,48"}


@dataclass(frozen=True)
class Who:
    name: str
    role: str | None  # None: no key at all
    team: str | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def sees_alice(self) -> bool:
        return self.admin or self.name == "alice" or (self.team == "a" and self.role is not None)

    @property
    def writes(self) -> bool:
        return self.role in ("admin", "member")


PEOPLE = [
    Who("anonymous", None),
    Who("revoked", "member"),
    Who("root", "admin"),
    Who("alice", "member", "a"),
    Who("carol", "member", "a"),
    Who("bob", "member"),
    Who("vic", "viewer", "a"),
    Who("val", "viewer"),
]


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _table_json() -> dict:
    from nasprune.latency import ProfileSettings, build_table
    from nasprune.registry import load_space

    settings = ProfileSettings(op_rounds=3, op_burst=2, e2e_rounds=3, e2e_burst=3, warmup=2)
    return json.loads(build_table(load_space("mlp_digits"), n_fit=0, n_validate=0, settings=settings).to_json())


def _weights() -> bytes:
    import torch
    from safetensors.torch import save

    from nasprune.graph import build_model

    torch.manual_seed(0)
    model = build_model(MODEL_PARAMS["architecture"], {"num_classes": 10}).eval()
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("authz") / "data", poll_s=0.05, auth="users", max_trials_per_job=50)
    with running(s, instant_runner) as (client, app):
        users = app.state.services.users
        users.add_user("root", "admin")
        _, root_key = users.create_key("root")
        keys = {"root": root_key}
        admin = {"Authorization": f"Bearer {root_key}"}
        for p in sorted(PEOPLE[1:], key=lambda p: p.name == "revoked"):  # bob before his revoked key
            if p.name == "root":
                continue
            user = "bob" if p.name == "revoked" else p.name
            if p.name != "revoked":
                r = client.post("/v1/users", json={"name": user, "role": p.role, "team": p.team}, headers=admin)
                assert r.status_code == 201, r.text
            r = client.post(f"/v1/users/{user}/keys", json={"label": p.name}, headers=admin)
            assert r.status_code == 201, r.text
            keys[p.name] = r.json()["key"]
        revoked_id = keys["revoked"].split("_")[1]
        assert client.delete(f"/v1/keys/{revoked_id}", headers=admin).status_code == 200

        alice = {"Authorization": f"Bearer {keys['alice']}"}
        x, y = blobs(shape=(64,), k=10, n_per_class=12)
        r = client.post(
            "/v1/datasets",
            params={"name": "alice_data", "format": "npz"},
            content=_npz(x=x, y=y),
            headers={**alice, **OCTET},
        )
        assert r.status_code == 201, r.text
        r = client.post("/v1/models", params=MODEL_PARAMS, content=_weights(), headers={**alice, **OCTET})
        assert r.status_code == 201, r.text
        model_id = r.json()["id"]
        x, y = blobs(shape=(3, 48, 48), k=10, n_per_class=12)  # data her model fits: a model job names its data
        r = client.post("/v1/datasets", params={"name": "alice_tiles", "format": "npz", "calib": 20},
                        content=_npz(x=x, y=y), headers={**alice, **OCTET})  # fmt: skip
        assert r.status_code == 201, r.text
        table = _table_json()
        r = client.post("/v1/devices", params={"name": "alice-dev"}, json=table, headers=alice)
        assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", json={**GOOD, "dataset": "alice_data", "device": "alice-dev"}, headers=alice)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        client.headers.update(alice)  # wait_for polls with the client's own headers
        try:
            job = wait_for(client, job_id, ("succeeded",))
        finally:
            client.headers.pop("Authorization")
        front = client.get(f"/v1/jobs/{job_id}/pareto", headers=alice).json()
        yield {
            "client": client,
            "app": app,
            "keys": keys,
            "job": job["id"],
            "candidate": front["recommended_id"],
            "model": model_id,
            "table": table,
        }


def _headers(world, who: Who) -> dict:
    return {} if who.role is None else {"Authorization": f"Bearer {world['keys'][who.name]}"}


# Each route: (kind, request builder, expectation). A builder takes (world, who, n) and returns
# (method, url, request kwargs); the expectation takes (who, response) and says whether the request
# was allowed (True), denied (False), or answered wrongly (raises).

ADMIN_ROUTES = {
    ("POST", "/v1/users"),
    ("GET", "/v1/users"),
    ("GET", "/v1/users/{name}"),
    ("PATCH", "/v1/users/{name}"),
    ("POST", "/v1/users/{name}/keys"),
    ("GET", "/v1/users/{name}/keys"),
    ("DELETE", "/v1/keys/{key_id}"),
    ("GET", "/v1/audit"),
}


def _job(world, suffix=""):
    return f"/v1/jobs/{world['job']}{suffix}"


ATTEMPTS = {
    ("GET", "/v1/jobs"): [("job", lambda w, who, n: ("GET", "/v1/jobs", {"params": {"limit": 500}}), "listed")],
    ("POST", "/v1/jobs"): [
        ("space", lambda w, who, n: ("POST", "/v1/jobs", {"json": GOOD}), "write"),
        ("dataset", lambda w, who, n: ("POST", "/v1/jobs", {"json": {**GOOD, "dataset": "alice_data"}}), "use"),
        (
            "model",
            lambda w, who, n: ("POST", "/v1/jobs", {"json": {**MODEL_JOB, "model": w["model"]}}),
            "use",
        ),
        ("device", lambda w, who, n: ("POST", "/v1/jobs", {"json": {**GOOD, "device": "alice-dev"}}), "use"),
    ],
    ("GET", "/v1/jobs/{job_id}"): [
        ("job", lambda w, who, n: ("GET", _job(w), {}), "read"),
        ("guessed id", lambda w, who, n: ("GET", "/v1/jobs/" + "0" * 32, {}), "absent"),
    ],
    ("POST", "/v1/jobs/{job_id}/cancel"): [("job", lambda w, who, n: ("POST", _job(w, "/cancel"), {}), "act")],
    ("GET", "/v1/jobs/{job_id}/trials"): [
        ("job", lambda w, who, n: ("GET", _job(w, "/trials"), {"params": {"limit": 5}}), "read")
    ],
    ("GET", "/v1/jobs/{job_id}/pareto"): [("job", lambda w, who, n: ("GET", _job(w, "/pareto"), {}), "read")],
    ("GET", "/v1/jobs/{job_id}/model"): [("job", lambda w, who, n: ("GET", _job(w, "/model"), {}), "read")],
    ("GET", "/v1/jobs/{job_id}/models/{candidate_id}"): [
        ("artifact path", lambda w, who, n: ("GET", _job(w, f"/models/{w['candidate']}"), {}), "read")
    ],
    ("GET", "/v1/spaces"): [("device", lambda w, who, n: ("GET", "/v1/spaces", {}), "listed")],
    ("GET", "/v1/devices"): [("device", lambda w, who, n: ("GET", "/v1/devices", {}), "listed")],
    ("POST", "/v1/devices"): [
        (
            "device",
            lambda w, who, n: ("POST", "/v1/devices", {"params": {"name": "alice-dev"}, "json": w["table"]}),
            "own",
        ),
    ],
    ("GET", "/v1/models"): [("model", lambda w, who, n: ("GET", "/v1/models", {}), "listed")],
    ("GET", "/v1/models/{model_id}"): [("model", lambda w, who, n: ("GET", f"/v1/models/{w['model']}", {}), "read")],
    ("POST", "/v1/models"): [
        (
            "upload",
            lambda w, who, n: (
                "POST",
                "/v1/models",
                {"params": MODEL_PARAMS, "content": b"not weights", "headers": OCTET},
            ),
            "write",
        ),
    ],
    ("GET", "/v1/datasets"): [("dataset", lambda w, who, n: ("GET", "/v1/datasets", {}), "listed")],
    ("GET", "/v1/datasets/{name}"): [("dataset", lambda w, who, n: ("GET", "/v1/datasets/alice_data", {}), "read")],
    ("POST", "/v1/datasets"): [
        (
            "upload",
            lambda w, who, n: (
                "POST",
                "/v1/datasets",
                {"params": {"name": f"d{n}", "format": "npz"}, "content": b"not a zip", "headers": OCTET},
            ),
            "write",
        ),
    ],
    ("GET", "/v1/me"): [("self", lambda w, who, n: ("GET", "/v1/me", {}), "me")],
    ("POST", "/v1/users"): [("user", lambda w, who, n: ("POST", "/v1/users", {"json": {"name": f"new{n}"}}), "admin")],
    ("GET", "/v1/users"): [("user", lambda w, who, n: ("GET", "/v1/users", {}), "admin")],
    ("GET", "/v1/users/{name}"): [("user", lambda w, who, n: ("GET", "/v1/users/alice", {}), "admin")],
    ("PATCH", "/v1/users/{name}"): [
        ("user", lambda w, who, n: ("PATCH", "/v1/users/alice", {"json": {"priority": 0}}), "admin")
    ],
    ("POST", "/v1/users/{name}/keys"): [
        ("key", lambda w, who, n: ("POST", "/v1/users/alice/keys", {"json": {"label": "x"}}), "admin")
    ],
    ("GET", "/v1/users/{name}/keys"): [("key", lambda w, who, n: ("GET", "/v1/users/alice/keys", {}), "admin")],
    ("DELETE", "/v1/keys/{key_id}"): [
        ("key", lambda w, who, n: ("DELETE", f"/v1/keys/{w['keys']['revoked'].split('_')[1]}", {}), "admin")
    ],
    ("GET", "/v1/audit"): [
        ("query parameter", lambda w, who, n: ("GET", "/v1/audit", {"params": {"user": "alice"}}), "admin")
    ],
    ("GET", "/mlflow"): [
        ("mlflow proxy", lambda w, who, n: ("GET", "/mlflow/api/2.0/mlflow/experiments/search", {}), "mlflow")
    ],
}


def _listed(world, kind: str, body) -> bool:
    if kind == "job":
        return world["job"] in [j["id"] for j in body["items"]]
    if kind == "device":
        names = (
            [d["name"] for d in body]
            if body and "builtin" in body[0]
            else [lat["device"] for s in body for lat in s["latency"]]
        )
        return "alice-dev" in names
    if kind == "model":
        return world["model"] in [m["id"] for m in body]
    return "alice_data" in [d["name"] for d in body]


def outcome(world, rule: str, kind: str, who: Who, r) -> bool:
    """True: allowed; False: denied. Fails the test when the answer is not what ``who`` should get."""
    code, text = r.status_code, r.text[:300]
    if who.role is None or who.name == "revoked":
        assert code == 401, (who, code, text)
        return False
    if rule == "mlflow":
        assert code == (404 if who.admin else 403), (who, code, text)  # admins pass the gate (no MLflow here)
        return who.admin
    if rule == "admin":
        assert (code < 300) if who.admin else code == 403, (who, code, text)
        return who.admin
    if rule == "me":
        assert code == 200 and r.json()["name"] == ("bob" if who.name == "revoked" else who.name), text
        return True
    if rule == "listed":
        assert code == 200, text
        assert _listed(world, kind, r.json()) == who.sees_alice, (who, kind)
        return who.sees_alice
    if rule == "absent":
        assert code == 404 and r.json()["code"] == "job_not_found", text
        return False
    if rule == "read":
        if who.sees_alice:
            assert code in (200, 304), (who, code, text)
            return True
        assert code == 404, (who, code, text)
        return False
    if not who.writes:
        assert code == 403 and r.json()["code"] == "forbidden", (who, code, text)
        return False
    if rule == "write":  # a new resource of one's own: passes authorisation (a junk body is then refused)
        assert code in (201, 202, 422), (who, code, text)
        return True
    if rule == "act":  # cancel: alice's job has finished, so 409 is what an allowed caller gets
        if who.sees_alice:
            assert code == 409 and r.json()["code"] == "job_already_finished", text
            return True
        assert code == 404 and r.json()["code"] == "job_not_found", (who, code, text)
        return False
    if rule == "use":  # a job on alice's dataset / model / device
        if who.sees_alice:
            assert code == 202, (who, code, text)
            return True
        detail = r.json()["detail"]  # said exactly as for a name nobody has
        assert (code, r.json()["code"]) in ((404, "model_not_found"), (422, "invalid_request")), (who, code, text)
        assert "unknown" in detail or "no model with id" in detail, text
        return False
    if rule == "own":  # replacing alice's device table: alice and admins only
        if who.admin or who.name == "alice":
            assert code == 201, text
            return True
        assert code == 409 and r.json()["code"] == "name_taken", (who, code, text)
        return False
    raise AssertionError(rule)


def test_every_route_as_every_role(world):
    client, app = world["client"], world["app"]
    routes = {
        (m, r.path) for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1/") for m in r.methods
    }
    missing = routes - set(ATTEMPTS)
    assert not missing, f"routes the authorisation suite does not try: {sorted(missing)}"

    counts: Counter = Counter()
    per_role: Counter = Counter()
    kinds: set[str] = set()
    n = 0
    for _route, attempts in sorted(ATTEMPTS.items()):
        for kind, build, rule in attempts:
            kinds.add(kind)
            for who in PEOPLE:
                n += 1
                m, url, kw = build(world, who, n)
                headers = {**kw.pop("headers", {}), **_headers(world, who)}
                r = client.request(m, url, headers=headers, **kw)
                allowed = outcome(world, rule, kind, who, r)
                counts["allowed" if allowed else "denied"] += 1
                per_role[(who.name, "allowed" if allowed else "denied")] += 1
    tried = counts["allowed"] + counts["denied"]
    print(
        f"\nauthorisation: {len(ATTEMPTS)} routes x {len(PEOPLE)} roles x {len(kinds)} resource kinds "
        f"({tried} attempts): {counts['allowed']} allowed, {counts['denied']} denied, 0 wrong"
    )
    for who in PEOPLE:
        print(
            f"  {who.name:9s} ({who.role or 'no key'}): {per_role[(who.name, 'allowed')]} allowed, "
            f"{per_role[(who.name, 'denied')]} denied"
        )
    assert tried == sum(len(a) for a in ATTEMPTS.values()) * len(PEOPLE)


def test_another_members_job_looks_like_no_job(world):
    """bob's 404 for alice's job is the 404 for an id nobody has: nothing confirms that it exists."""
    client, keys = world["client"], world["keys"]
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    theirs = client.get(f"/v1/jobs/{world['job']}", headers=bob).json()
    nobodys = client.get("/v1/jobs/" + "1" * 32, headers=bob).json()
    assert theirs["detail"].replace(world["job"], "ID") == nobodys["detail"].replace("1" * 32, "ID")
    assert theirs["code"] == nobodys["code"] == "job_not_found"
    # pagination of a filtered listing: totals count only what the caller sees
    page = client.get("/v1/jobs", params={"limit": 1}, headers=bob).json()
    assert all(j["user"] == "bob" for j in page["items"])
    total_bob = page["total"]
    alice = {"Authorization": f"Bearer {keys['alice']}"}
    seen, url = [], "/v1/jobs?limit=1"
    while url:
        page = client.get(url, headers=alice).json()
        seen += [j["id"] for j in page["items"]]
        url = page["next"]
    assert world["job"] in seen and len(seen) == len(set(seen)) == page["total"]
    assert (
        total_bob + page["total"]
        <= client.get("/v1/jobs", params={"limit": 500}, headers={"Authorization": f"Bearer {keys['root']}"}).json()[
            "total"
        ]
    )


def test_listing_by_user(world):
    """``?user=`` narrows a listing to that user's jobs, among those the caller sees: all of them for an admin,
    nothing of another member's for bob (the same empty page as for a user who does not exist)."""
    client, keys = world["client"], world["keys"]
    root = client.get("/v1/jobs", params={"user": "alice", "limit": 1}, headers=_headers(world, PEOPLE[2])).json()
    assert root["total"] >= 1 and all(j["user"] == "alice" for j in root["items"])
    if root["total"] > 1:
        assert root["next"] == "/v1/jobs?user=alice&limit=1&offset=1"
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    theirs = client.get("/v1/jobs", params={"user": "alice"}, headers=bob).json()
    nobody = client.get("/v1/jobs", params={"user": "nobody"}, headers=bob).json()
    assert theirs["items"] == nobody["items"] == [] and theirs["total"] == nobody["total"] == 0
