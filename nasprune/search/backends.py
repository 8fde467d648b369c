"""The search backends, by the name a job gives (``SearchJob.backend``), all with one signature:
``run(objective, job, ctx, on_trial, checkpoint_id) -> dict`` runs the job's remaining trials, calls
``on_trial`` for each finished one, and returns what it has to report (Ray: the nodes trials ran on).
``tests/search/test_search.py`` runs one conformance suite over every backend here."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from nasprune.search import optuna_backend, ray_backend
from nasprune.search.job import Backend

BACKENDS: dict[str, Callable[..., dict]] = {"optuna": optuna_backend.run, "ray": ray_backend.run}
if set(BACKENDS) != set(get_args(Backend)):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError(f"backends {sorted(BACKENDS)} differ from SearchJob.backend's {get_args(Backend)}")
