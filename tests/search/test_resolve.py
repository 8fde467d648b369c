"""A job resolved once (nasprune.search.resolve): its space parsed once, its model traced once per process."""

from __future__ import annotations

import nasprune.graph.supernet
import nasprune.graph.units
import nasprune.registry
from nasprune.paths import job_files, model_space_file
from nasprune.registry import load_space
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.resolve import job_spaces
from nasprune.search.runner import run_job
from tests.search.conftest import SPACE


def _counting(monkeypatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    def counted(*a, **kw):
        calls.append(a[:1])
        return real(*a, **kw)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_job_parses_its_space_once_and_traces_its_model_once(prepared, budget, tmp_path, monkeypatch):
    root, _ = prepared
    parsed = _counting(monkeypatch, nasprune.registry, "parse_space")
    traced = _counting(monkeypatch, nasprune.graph.supernet, "analyze_model")  # converting a model to a supernet
    planned = _counting(monkeypatch, nasprune.graph.units, "analyze_model")  # a latency unit plan's own trace
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=3, refine_trials=0, sampler="random",
                    finetune_steps=0, verify_top_k=1)  # fmt: skip
    ctx = JobContext(job_id="once", storage_url=f"sqlite:///{tmp_path / 't.db'}", output_dir=tmp_path / "out",
                     data_dir=root)  # fmt: skip
    res = run_job(job, ctx)
    assert res.n_trials == 3 and job_files(ctx.output_dir).result.is_file()
    assert len(parsed) == 1, parsed
    assert len(traced) + len(planned) == 1, (traced, planned)


def test_the_spaces_of_a_job_on_another_dataset_and_of_an_uploaded_model(tmp_path):
    own = job_spaces(SearchJob(space=SPACE, latency_budget_ms=1.0))
    assert own.space == own.table_space == load_space(SPACE)
    other = job_spaces(SearchJob(space=SPACE, latency_budget_ms=1.0, dataset="mnist1d"))
    assert other.space.dataset == "mnist1d" and other.table_space == own.table_space
    assert other.space.latency_digest() == other.table_space.latency_digest()  # one table serves both
    assert other.space.digest() != other.table_space.digest()  # but its own checkpoint
    model_id = "m_" + "0" * 16
    load_space(SPACE).model_copy(update={"name": model_id}).save(model_space_file(model_id, tmp_path))
    up = job_spaces(SearchJob(space=model_id, model=model_id, latency_budget_ms=1.0), tmp_path)
    assert up.space.name == model_id and up.space.groups == own.space.groups
