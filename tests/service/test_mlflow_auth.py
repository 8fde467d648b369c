"""The MLflow server of ``nasprune serve`` is behind the API token, and holds none of the service's secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from nasprune.mlflow_server import free_port

TOKEN = "s3cret-api-token-for-the-test"


@contextmanager
def serve(tmp_path: Path, token: str | None, output: list[str] | None = None, env_extra: dict | None = None):
    """``nasprune serve`` in a subprocess; ``output`` gets what it printed once it stopped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}
    if token:
        env["NASPRUNE_API_TOKEN"] = token
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "nasprune", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    proc = subprocess.Popen(
        [*cmd, "--no-access-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=3).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            raise AssertionError("nasprune serve did not become ready")
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        if output is not None:
            output.append(out)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def mlflow_processes(serve_pid: int) -> list[int]:
    return [p for p in descendants(serve_pid) if b"mlflow" in Path(f"/proc/{p}/cmdline").read_bytes()]


def tcp_listen_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                inodes.add(f[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_mlflow_is_behind_the_api_token_and_holds_no_secret(tmp_path):
    from mlflow.tracking import MlflowClient

    printed: list[str] = []
    with serve(tmp_path, TOKEN, printed) as (base, proc):
        # the MLflow processes: no API token in their environment, no TCP port to reach them by
        procs = mlflow_processes(proc.pid)
        assert len(procs) >= 2, "mlflow server and its uvicorn process"
        listening = tcp_listen_inodes()
        for pid in procs:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"NASPRUNE_API_TOKEN" not in environ and TOKEN.encode() not in environ
            assert not socket_inodes(pid) & listening, f"MLflow process {pid} listens on a TCP port"

        # authenticated (the token as the basic-auth password, as MLflow's own client sends it): works
        client = MlflowClient(f"http://user:{TOKEN}@{base.removeprefix('http://')}/mlflow")
        exp = client.create_experiment("auth-test")
        run = client.create_run(exp)
        run_id = run.info.run_id
        (tmp_path / "model.onnx").write_bytes(b"not really onnx")
        client.log_artifact(run_id, str(tmp_path / "model.onnx"))

        search = ("GET", "/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=10", None)
        artifact = ("GET", f"/mlflow/get-artifact?path=model.onnx&run_uuid={run_id}", None)
        set_tag = ("POST", "/mlflow/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"})
        for method, path, body in (search, artifact, set_tag):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dTp3cm9uZw=="}):
                r = httpx.request(method, base + path, json=body, headers=headers, timeout=10)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Basic")
        assert "k" not in client.get_run(run_id).data.tags  # the refused write did not happen

        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.get(base + search[1], headers=auth, timeout=10)
        assert r.status_code == 200 and "auth-test" in r.text
        r = httpx.get(base + artifact[1], headers=auth, timeout=10)
        assert r.status_code == 200 and r.content == b"not really onnx"
        r = httpx.post(base + set_tag[1], json=set_tag[2], headers=auth, timeout=10)
        assert r.status_code == 200 and client.get_run(run_id).data.tags["k"] == "v"
        assert httpx.get(f"{base}/mlflow/", headers=auth, timeout=10).status_code == 200  # the UI

        # the API itself is unchanged: the token is needed there too
        assert httpx.get(f"{base}/v1/jobs", timeout=10).status_code == 401
        assert httpx.get(f"{base}/v1/jobs", headers=auth, timeout=10).status_code == 200
    # nothing printed a credential (MLflow's client prints run links with its tracking URI's user info)
    assert TOKEN not in printed[0] and "nasprune:" not in printed[0] and "@127.0.0.1" not in printed[0]
    assert f"MLflow UI:     {base}/mlflow/" in printed[0]


def test_serve_restarts_a_killed_mlflow_server_and_readyz_recovers(tmp_path):
    with serve(tmp_path, TOKEN) as (base, proc):
        (cli,) = [
            p for p in mlflow_processes(proc.pid) if b"mlflow\x00server" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        pgid = os.getpgid(cli)
        os.kill(cli, signal.SIGKILL)  # the `mlflow server` PID only; its uvicorn process must not keep serving
        deadline = time.monotonic() + 30
        down = None
        while time.monotonic() < deadline:
            r = httpx.get(f"{base}/readyz", timeout=5)
            if r.status_code == 503:
                down = r.json()["checks"]["mlflow"]
                break
            time.sleep(0.1)
        assert down is not None and "MLflow server at" in down and "@" not in down and "nasprune:" not in down
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
            time.sleep(0.5)
        assert httpx.get(f"{base}/readyz", timeout=5).json()["checks"]["mlflow"] == "ok"
        assert not Path(f"/proc/{cli}").exists()  # reaped, not a zombie
        left = [p for p in descendants(proc.pid) if _pgid(p) == pgid]
        assert left == [], f"processes of the killed server's group still run: {left}"
        r = httpx.get(
            f"{base}/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=5",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert r.status_code == 200


def test_with_users_mlflow_is_for_admins_and_no_key_reaches_a_child(tmp_path, capsys):
    """NASPRUNE_AUTH=users: /mlflow takes an admin's key (bearer or basic), refuses a member (403) and no key
    (401); the service's own tracking client still gets through (readyz); --mlflow-port is refused; the keys
    are in no child process's environment and nothing the server printed."""
    from mlflow.tracking import MlflowClient

    from nasprune.cli import main

    data = ["--data-dir", str(tmp_path / "d")]
    keys = {}
    for name, role in (("root", "admin"), ("alice", "member")):
        assert main(["users", "add", name, "--role", role, *data]) == 0
        keys[name] = capsys.readouterr().out.strip()
    printed: list[str] = []
    with serve(tmp_path, None, printed, {"NASPRUNE_AUTH": "users"}) as (base, proc):
        assert httpx.get(f"{base}/readyz", timeout=10).json()["checks"]["mlflow"] == "ok"
        search = f"{base}/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=10"
        assert httpx.get(search, timeout=10).status_code == 401
        r = httpx.get(search, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=10)
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert httpx.get(search, headers={"Authorization": f"Bearer {keys['root']}"}, timeout=10).status_code == 200
        client = MlflowClient(f"http://root:{keys['root']}@{base.removeprefix('http://')}/mlflow")
        assert client.create_experiment("admins-only")
        alice = MlflowClient(f"http://alice:{keys['alice']}@{base.removeprefix('http://')}/mlflow")
        with pytest.raises(Exception, match="403|forbidden|admins"):
            alice.create_experiment("members-not")
        r = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=10)
        assert r.json()["name"] == "alice"
        for pid in descendants(proc.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            assert not any(k.encode() in environ for k in keys.values()), pid
    assert not any(k in printed[0] for k in keys.values())
    bad = subprocess.run(
        [sys.executable, "-m", "nasprune", "serve", "--mlflow-port", str(free_port()), *data],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}, "NASPRUNE_AUTH": "users"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "--mlflow-port would serve MLflow to anyone" in bad.stderr
