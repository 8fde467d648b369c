"""Optuna's per-trial INFO lines are silenced in a search's own thread, never process-wide."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import threading

import optuna

from nasprune.search import study as study_module
from nasprune.search.study import quiet_optuna


def test_importing_the_search_leaves_optuna_verbosity_alone():
    code = (
        "import optuna\n"
        "before = optuna.logging.get_verbosity()\n"
        "import nasprune.search.study, nasprune.search.optuna_backend, nasprune.search.ray_backend\n"
        "assert optuna.logging.get_verbosity() == before, (before, optuna.logging.get_verbosity())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_filtered_loggers_are_optunas():
    for name in study_module._OPTUNA_INFO_LOGGERS:
        module = importlib.import_module(name)
        assert module._logger.name == name


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[str, str]] = []

    def emit(self, record):
        self.messages.append((record.threadName, record.getMessage()))


def test_only_the_searching_thread_is_quiet():
    records = Records()
    root = logging.getLogger("optuna")
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    root.addHandler(records)
    try:
        searching, other = threading.Event(), threading.Event()

        @quiet_optuna()
        def search():
            optuna.create_study(study_name="in-search")
            searching.set()
            assert other.wait(30)
            optuna.create_study(study_name="in-search-again")

        def user_code():
            assert searching.wait(30)
            optuna.create_study(study_name="by-the-user")  # while the search is inside quiet_optuna
            other.set()

        threads = [threading.Thread(target=search, name="search"), threading.Thread(target=user_code, name="user")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        optuna.create_study(study_name="after")
    finally:
        root.removeHandler(records)
        optuna.logging.set_verbosity(before)
    created = [(thread, msg.rsplit(" ", 1)[-1]) for thread, msg in records.messages if "new study created" in msg]
    assert created == [("user", "by-the-user"), ("MainThread", "after")]


def _job_study(tmp_path):
    from nasprune.search.job import SearchJob
    from nasprune.search.study import journal_url, open_study

    job = SearchJob(space="mlp_digits", latency_budget_ms=0.5, n_trials=6, seed=1)
    url = journal_url(tmp_path / "trials.journal")
    study = open_study(job, "job-a", url)
    for i in range(6):
        trial = study.ask()
        trial.set_constraint("latency_ms", (i - 3) / 10)  # three feasible, three over budget
        study.tell(trial, [0.8 + i / 100, 0.2 + i / 10])
    return job, url, study


def test_a_jobs_study_names_its_objectives_and_says_what_it_searched(tmp_path):
    from nasprune.search.study import open_study, trial_constraints

    job, url, _ = _job_study(tmp_path)
    study = open_study(job, "job-a", url)  # reopened, as the service and optuna-dashboard see it
    assert study.metric_names == ["val_accuracy", "predicted_latency_ms"]
    attrs = study.user_attrs
    assert attrs["space"] == "mlp_digits" and attrs["device"] == "local-cpu" and attrs["latency_budget_ms"] == 0.5
    assert "dataset" not in attrs and "model" not in attrs  # unset: not stored as None
    # Optuna 5 keeps each set_constraint under its own name
    assert [trial_constraints(t) for t in study.trials][:2] == [{"latency_ms": -0.3}, {"latency_ms": -0.2}]
    # plotly is installed: optuna.visualization draws the job's front with the objectives' names
    import optuna.visualization

    fig = optuna.visualization.plot_pareto_front(study)
    titles = {fig.layout.xaxis.title.text, fig.layout.yaxis.title.text}
    assert titles == {"val_accuracy", "predicted_latency_ms"}
    assert sum(len(d.x) for d in fig.data if d.x is not None) == 6


def test_nasprune_dashboard_serves_the_jobs_study(tmp_path):
    import httpx

    from nasprune.mlflow_server import free_port

    _job_study(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "nasprune", "dashboard", "job-a", "--data-dir", str(tmp_path), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # printed once the study is found, before the server starts
        assert f"http://127.0.0.1:{port}/dashboard/studies/" in line, line
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(600):  # the server is up within seconds; each try waits on the connection
                try:
                    r = http.get("/api/studies")
                    break
                except httpx.ConnectError:
                    assert proc.poll() is None, proc.stdout.read()
                    threading.Event().wait(0.1)
            studies = r.json()["study_summaries"]
        assert [s["study_name"] for s in studies] == ["job-a"]
    finally:
        proc.terminate()
        proc.wait(30)

    out = subprocess.run(
        [sys.executable, "-m", "nasprune", "dashboard", "no-such-job", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no job 'no-such-job'" in out.stderr and "job-a" in out.stderr
    assert "--data-dir" in out.stderr
