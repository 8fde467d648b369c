"""Fixtures of the service tests: database URLs for SQLite and a real PostgreSQL (``pg_server``, from
``tests/pg.py``), settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty job database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}?timeout=30"
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests set every setting explicitly: no NASPRUNE_* from the caller's environment."""
    for key in list(os.environ):
        if key.startswith("NASPRUNE_") and key != "NASPRUNE_SPACES_PATH":
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path):
    from nasprune.settings import Settings

    return Settings(data_dir=tmp_path / "data", poll_s=0.05, heartbeat_s=0.5)
