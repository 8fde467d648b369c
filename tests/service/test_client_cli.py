"""``nasprune.client.Client`` and the CLI (submit, jobs, fetch, cancel, serve) against real servers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from nasprune.client import Client, JobFailed, ServiceError
from nasprune.mlflow_server import free_port
from tests.service.fakes import FAKE_ONNX, failing_runner, instant_runner
from tests.service.server import running


def runner(job, ctx):
    return failing_runner(job, ctx) if job.seed == 13 else instant_runner(job, ctx)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("cli") / "data", poll_s=0.05)
    with running(s, runner) as (client, _):
        yield str(client.base_url).rstrip("/")


def test_client_flow(url, tmp_path):
    with Client(url) as c:
        assert {s["name"] for s in c.spaces()} >= {"mlp_digits"} and c.devices()[0]["name"] == "local-cpu"
        job_id = c.submit("mlp_digits", 2.0, n_trials=4)
        job = c.wait(job_id, poll_s=0.05, timeout_s=20, progress=False)
        assert job["status"] == "succeeded" and job["progress"]["n_done"] == 4
        front = c.pareto(job_id)
        assert front["recommended_id"] == front["candidates"][0]["candidate_id"]
        path = c.download_model(job_id, tmp_path / "sub" / "m.onnx")
        assert path.read_bytes() == FAKE_ONNX
        path = c.download_model(job_id, tmp_path / "c.onnx", candidate_id=front["recommended_id"])
        assert path.read_bytes() == FAKE_ONNX
        assert c.jobs(status="succeeded")["total"] >= 1
        assert c.health() == {"status": "ok"} and c.ready()["status"] == "ready"


def test_client_errors(url, tmp_path):
    with Client(url) as c:
        with pytest.raises(ServiceError, match="no job with id 'nope'") as e:
            c.job("nope")
        assert e.value.status == 404 and e.value.code == "job_not_found"
        with pytest.raises(ServiceError, match="unknown search space 'nope'") as e:
            c.submit("nope", 1.0)
        assert e.value.status == 422
        failed = c.submit("mlp_digits", 1.0, seed=13)
        with pytest.raises(JobFailed, match="supernet checkpoint is corrupt"):
            c.wait(failed, poll_s=0.05, timeout_s=20, progress=False)
        with pytest.raises(ServiceError, match="HTTP 409"):
            c.download_model(failed, tmp_path / "x.onnx")
        assert not (tmp_path / "x.onnx").exists()
    unreachable = f"http://127.0.0.1:{free_port()}"
    with Client(unreachable) as c, pytest.raises(ServiceError, match="cannot reach.*'nasprune serve'"):
        c.health()


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "nasprune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``nasprune ARGS`` run by ``main`` in this process, its output captured as a subprocess's would be."""
    from nasprune.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["nasprune", *args], code, out.out, out.err)


def test_cli_submit_jobs_fetch_cancel(url, tmp_path):
    r = cli(
        "submit",
        "--space",
        "mlp_digits",
        "--budget-ms",
        "2",
        "--trials",
        "3",
        "--finetune-steps",
        "7",
        "--url",
        url,
        "--wait",
        "-o",
        str(tmp_path / "w.onnx"),
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert "succeeded" in r.stdout and (tmp_path / "w.onnx").read_bytes() == FAKE_ONNX
    # the front, as 'nasprune search' prints it: the fake's recommended candidate 1, the other 2
    assert "recommended: 0000000000000001 (trial 1) accuracy 90.00%, measured 1.8000 ms <= 2 ms" in r.stdout
    assert re.search(r"^\*\s+0000000000000001\s+1\s+90\.00%", r.stdout, re.M), r.stdout
    assert "\r" not in r.stderr  # not a terminal: progress as plain lines
    r = cli("jobs", "--url", url)
    assert r.returncode == 0 and job_id in r.stdout and "succeeded" in r.stdout, r.stderr
    r = cli("jobs", job_id, "--url", url)
    assert r.returncode == 0 and f"job       {job_id}: succeeded" in r.stdout, r.stderr
    assert "search    mlp_digits on local-cpu, budget 2 ms, 3 trials" in r.stdout and "nasprune pareto" in r.stdout
    r = cli("jobs", job_id, "--json", "--url", url)
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == job_id
    assert json.loads(r.stdout)["spec"]["finetune_steps"] == 7  # the recovery budget travels with the job
    r = cli("fetch", job_id, "-o", str(tmp_path / "f.onnx"), "--url", url)
    assert r.returncode == 0 and (tmp_path / "f.onnx").read_bytes() == FAKE_ONNX, r.stderr
    r = cli("cancel", job_id, "--url", url)
    assert r.returncode == 2 and "already succeeded" in r.stderr and "Traceback" not in r.stderr
    r = cli("submit", "--space", "mlp_digits", "--budget-ms", "-1", "--url", url)
    assert r.returncode == 2 and "greater than 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "--budget-ms: " in r.stderr and "latency_budget_ms" not in r.stderr  # the CLI's flag, not the field
    r = cli("submit", "--space", "mlp_digits", "--budget-ms", "2", "--finetune-steps", "-5", "--url", url)
    assert r.returncode == 2 and "--finetune-steps: " in r.stderr and "Traceback" not in r.stderr


def test_cli_pareto_trials_and_errors_in_cli_terms(url, tmp_path, capsys):
    """In this process (``main``), against the real server: the subprocess test above covers startup."""
    with Client(url) as c:
        job_id = c.submit("mlp_digits", 2.0, n_trials=3)
        c.wait(job_id, poll_s=0.05, timeout_s=20, progress=False)
    r = in_process(capsys, "pareto", job_id, "--url", url)
    assert r.returncode == 0, r.stderr
    assert "recommended: 0000000000000001" in r.stdout and "0000000000000002" in r.stdout
    r = in_process(capsys, "pareto", job_id, "--json", "--url", url)
    front = json.loads(r.stdout)
    assert front["recommended_id"] == "0000000000000001" and len(front["candidates"]) == 2
    r = in_process(capsys, "trials", job_id, "--json", "--url", url)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr  # the fake search stores no trials
    r = in_process(capsys, "trials", job_id, "--url", url)
    assert r.returncode == 0 and "(0 trials)" in r.stdout

    r = in_process(
        capsys, "submit", "--space", "mlp_digits", "--budget-ms", "2", "-o", str(tmp_path / "m.onnx"), "--url", url
    )
    assert r.returncode == 2 and "-o/--output needs --wait" in r.stderr and r.stdout == "", r.stderr
    r = in_process(capsys, "submit", "--space", "mlp_digits", "--budget-ms", "2", "--device", "phone", "--url", url)
    assert r.returncode == 2 and "--device: unknown device 'phone'" in r.stderr, r.stderr
    assert "nasprune devices upload NAME TABLE.json" in r.stderr and "/v1/" not in r.stderr
    r = in_process(capsys, "pareto", "nope", "--url", url)
    assert r.returncode == 2 and "no job with id 'nope' (list jobs with nasprune jobs)" in r.stderr, r.stderr
    r = in_process(capsys, "devices", "list", "--url", url)
    assert r.returncode == 0 and "local-cpu" in r.stdout and "nasprune lut build --space mlp_digits" in r.stdout


def test_front_printout_links_the_mlflow_run(capsys):
    from nasprune.cli.jobs import _print_front
    from tests.service.fakes import candidate

    front = {
        "candidates": [candidate(1, 0.9, 1.0, measured=1.1).model_dump(), candidate(2, 0.8, 3.0).model_dump()],
        "recommended_id": "0000000000000001",
        "latency_budget_ms": 2.0,
        "n_trials": 5,
    }
    _print_front(front, "http://127.0.0.1:8000", {"mlflow_run_url": "/mlflow/#/experiments/1/runs/abc"})
    out = capsys.readouterr().out
    assert "MLflow run: http://127.0.0.1:8000/mlflow/#/experiments/1/runs/abc" in out
    assert "(* recommended; ! over the budget)" in out and re.search(r"^!\s+0000000000000002", out, re.M)


def test_serve_starts_api_and_mlflow(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nasprune",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "d"),
            "--no-access-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            raise AssertionError("nasprune serve did not become ready")
        checks = httpx.get(f"{base}/readyz").json()["checks"]
        assert checks == {"database": "ok", "mlflow": "ok"}
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"API docs: {base}/docs" in out
    mlflow_line = next(line for line in out.splitlines() if line.startswith("MLflow UI:"))
    mlflow_url = mlflow_line.split()[-1]
    assert mlflow_url.startswith("http://127.0.0.1:")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{mlflow_url}/health", timeout=2)  # stopped with the service
    assert proc.returncode == 0 and "nasprune serve stopped" in out
