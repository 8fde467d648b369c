"""The job store, on SQLite and on a real PostgreSQL: the same code, the same behaviour."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from nasprune.search.job import Progress, SearchJob, SearchResult
from nasprune.service.jobs import JobAlreadyFinished, JobNotFound, JobStatus, JobStore, QueueFull, SchemaError
from nasprune.service.jobs.store import VERSION_TABLE


def spec(**kw) -> SearchJob:
    return SearchJob(**{"space": "mlp_digits", "latency_budget_ms": 1.0, "n_trials": 5, **kw})


@pytest.fixture
def store(db_url):
    s = JobStore(db_url)
    s.migrate()
    yield s
    s.close()


def test_create_get_list(store):
    a = store.create(spec(seed=1))
    b = store.create(spec(seed=2))
    got = store.get(a.id)
    assert got.status is JobStatus.QUEUED and got.spec.seed == 1 and got.progress.stage == "queued"
    assert got.created_at.tzinfo is not None
    total, page = store.list()
    assert total == 2 and [r.id for r in page] == [b.id, a.id]  # newest first
    total, page = store.list(limit=1, offset=1)
    assert total == 2 and [r.id for r in page] == [a.id]
    assert store.list(JobStatus.RUNNING) == (0, [])
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        store.get("nope")


def test_claim_is_fifo_and_exclusive(store):
    ids = [store.create(spec(seed=i)).id for i in range(6)]
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (rec := store.claim_next(f"w{n}")) is not None:
            with lock:
                claimed.append(rec.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == len(ids)
    assert store.count(JobStatus.RUNNING) == 6


def test_claim_order(store):
    ids = [store.create(spec(seed=i)).id for i in range(3)]
    assert [store.claim_next("w").id for _ in ids] == ids
    assert store.claim_next("w") is None


def test_progress_and_finish_are_owner_guarded(store):
    job = store.create(spec())
    rec = store.claim_next("w1")
    assert rec.status is JobStatus.RUNNING and rec.attempts == 1 and rec.owner == "w1"
    assert store.set_progress(job.id, Progress(stage="searching", n_done=2, n_total=5), owner="w1")
    assert not store.set_progress(job.id, Progress(stage="searching", n_done=3, n_total=5), owner="w2")
    assert store.get(job.id).progress.n_done == 2
    result = SearchResult(job=job.spec, n_trials=5, pareto=[], recommended=None, tracking_error="mlflow down")
    assert not store.finish(job.id, JobStatus.SUCCEEDED, owner="w2", result=result)
    assert store.finish(job.id, JobStatus.SUCCEEDED, owner="w1", result=result)
    done = store.get(job.id, with_result=True)
    assert done.status is JobStatus.SUCCEEDED and done.finished_at is not None and done.has_result
    assert done.result.n_trials == 5 and done.tracking_error == "mlflow down"
    assert store.get(job.id).has_result and store.get(job.id).result_json is None
    assert not store.finish(job.id, JobStatus.FAILED, error="late")  # final states do not change


def test_cancel(store):
    queued = store.create(spec())
    running = store.create(spec())
    store.claim_next("w")  # takes the older one
    queued, running = running, queued
    rec = store.request_cancel(queued.id)
    assert rec.status is JobStatus.CANCELLED and rec.finished_at is not None
    rec = store.request_cancel(running.id)
    assert rec.status is JobStatus.RUNNING and rec.cancel_requested
    assert store.is_cancel_requested(running.id)
    store.finish(running.id, JobStatus.CANCELLED)
    assert store.request_cancel(running.id).status is JobStatus.CANCELLED  # idempotent
    done = store.create(spec())
    store.claim_next("w")
    store.finish(done.id, JobStatus.SUCCEEDED)
    with pytest.raises(JobAlreadyFinished, match="already succeeded"):
        store.request_cancel(done.id)


def test_queue_limit(store):
    store.create(spec(), max_queued=2)
    store.create(spec(), max_queued=2)
    with pytest.raises(QueueFull, match="2 jobs queued, limit 2"):
        store.create(spec(), max_queued=2)
    store.claim_next("w")
    store.create(spec(), max_queued=2)


def test_requeue_stale_and_shutdown(store):
    a = store.create(spec())
    b = store.create(spec())
    store.claim_next("w")
    store.claim_next("w")
    store.heartbeat("w", [b.id])
    assert store.requeue_stale(timedelta(hours=1)) == []
    assert sorted(store.requeue_stale(timedelta(0))) == sorted([a.id, b.id])
    rec = store.claim_next("w2")
    assert rec.id == a.id and rec.attempts == 2 and rec.started_at is not None
    assert store.requeue(a.id, owner="w2", count_attempt=False)
    assert store.get(a.id).attempts == 1


def test_migrate_is_idempotent(store):
    store.migrate()
    assert store.schema_version() == "0003"


def test_old_schema_upgrades_with_its_data(db_url):
    old = JobStore(db_url)
    old.migrate("0001")
    assert old.schema_version() == "0001"
    with old.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO nasprune_jobs (id, status, spec, created_at) VALUES ('a' || :x, 'queued', :spec, :t)"),
            {"x": "0" * 31, "spec": spec().model_dump_json(), "t": "2026-01-01 00:00:00"},
        )
    old.close()
    new = JobStore(db_url)
    new.migrate()
    assert new.schema_version() == "0003"
    rec = new.get("a" + "0" * 31)
    assert rec.status is JobStatus.QUEUED and rec.attempts == 0 and not rec.cancel_requested
    assert new.claim_next("w").id == rec.id
    new.close()


def test_newer_schema_is_refused(store):
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="schema version '9999'"):
        store.migrate()
