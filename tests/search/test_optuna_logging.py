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
