"""Fair share across users: the worker pool takes the next job of the user with the fewest running jobs, then
the higher priority, then the user served least recently, then the oldest job.

The end-to-end test runs the real worker pool behind a real uvicorn server in users mode: one user
submits 40 jobs, two others one each a little later; the two single jobs start within one job's
duration. The test waits on events set when jobs start, never on sleeps; a job's "work" is a wait of
``JOB_S`` seconds inside the runner.
"""

from __future__ import annotations

import threading
import time

from nasprune.search.job import SearchJob
from nasprune.service.jobs import JobStatus, JobStore
from nasprune.settings import Settings
from tests.service.fakes import result_for
from tests.service.server import running

GOOD = {"space": "mlp_digits", "latency_budget_ms": 2.0, "n_trials": 1}
JOB_S = 0.5  # how long each job runs


def spec() -> SearchJob:
    return SearchJob(space="mlp_digits", latency_budget_ms=1.0, n_trials=1)


def test_claim_takes_turns_across_users(db_url):
    """One worker: a user's pile of jobs does not go first just because it is older; priority and limits count."""
    store = JobStore(db_url)
    store.migrate()
    try:
        heavy = [store.create(spec(), user="heavy").id for _ in range(5)]
        b = store.create(spec(), user="b").id
        c = store.create(spec(), user="c").id
        order = []
        for _ in range(7):
            rec = store.claim_next("w")
            order.append(rec.id)
            store.finish(rec.id, JobStatus.SUCCEEDED, owner="w")
        # heavy was served first (oldest), then b and c, who had never been served, then heavy again
        assert order == [heavy[0], b, c, *heavy[1:]]
        assert store.claim_next("w") is None

        # two workers: the user with fewer running jobs goes first
        h = [store.create(spec(), user="heavy").id for _ in range(3)]
        first = store.claim_next("w1")
        late = store.create(spec(), user="b").id
        assert first.id == h[0] and store.claim_next("w2").id == late

        # among users with as many running jobs, a higher priority goes first; a user at their limit is skipped
        store.finish(first.id, JobStatus.SUCCEEDED, owner="w1")
        store.finish(late, JobStatus.SUCCEEDED, owner="w2")
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO nasprune_users (name, role, disabled, max_running, priority, created_at) "
                "VALUES ('vip', 'member', false, 1, 5, '2026-01-01 00:00:00')"
            )
        v1, v2 = store.create(spec(), user="vip").id, store.create(spec(), user="vip").id
        assert store.claim_next("w3").id == v1  # priority 5, though heavy's jobs are older
        assert store.claim_next("w4").id == h[1]  # vip is at its limit of 1 running job
        store.finish(v1, JobStatus.SUCCEEDED, owner="w3")
        assert store.claim_next("w3").id == v2
    finally:
        store.close()


class TimedRunner:
    """Each job runs ``JOB_S`` seconds; its start time is recorded and signalled. The first two jobs begin
    their ``JOB_S`` when ``go`` is set (once the test has submitted the late jobs), so the late jobs are
    surely queued when those two end, however slowly the test's requests went."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}
        self.two_running = threading.Event()
        self.go = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self.events.setdefault(job_id, threading.Event())

    def __call__(self, job, ctx):
        with self._lock:
            self.started[ctx.job_id] = time.monotonic()
            first = len(self.started) <= 2
            if len(self.started) >= 2:
                self.two_running.set()
        self.event(ctx.job_id).set()
        if first:
            assert self.go.wait(30)
        self._stop.wait(JOB_S)  # the job's work
        return result_for(job, ctx, 1)


def test_three_users_one_with_forty_jobs(tmp_path):
    runner = TimedRunner()
    s = Settings(data_dir=tmp_path / "data", poll_s=0.05, heartbeat_s=0.5, auth="users", workers=2, user_max_queued=50)
    with running(s, runner) as (client, app):
        users = app.state.services.users
        keys = {}
        for name in ("heavy", "b", "c"):
            users.add_user(name, "member")
            keys[name] = {"Authorization": f"Bearer {users.create_key(name)[1]}"}
        submitted: dict[str, float] = {}
        owner: dict[str, str] = {}

        def submit(user: str) -> str:
            sent = time.monotonic()
            r = client.post("/v1/jobs", json=GOOD, headers=keys[user])
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            submitted[job_id], owner[job_id] = sent, user
            return job_id

        heavy = [submit("heavy") for _ in range(40)]
        assert runner.two_running.wait(30)  # both workers busy with heavy's jobs
        singles = [submit("b"), submit("c")]
        runner.go.set()  # the two running jobs take JOB_S from now
        released = time.monotonic()
        for job_id in singles:
            assert runner.event(job_id).wait(30), f"{owner[job_id]}'s job did not start"
        waits = {owner[j]: runner.started[j] - submitted[j] for j in singles}
        after_release = {owner[j]: runner.started[j] - released for j in singles}
        for job_id in heavy[:6]:  # and heavy's queue goes on after them (all 40 would only add 10 s of waiting)
            assert runner.event(job_id).wait(60)
        heavy_waits = sorted(runner.started[j] - submitted[j] for j in heavy[:6])
        print(
            f"\nfair share, 2 workers, jobs of {JOB_S} s: b waited {waits['b']:.2f} s, c {waits['c']:.2f} s; "
            f"heavy's first 6 jobs waited {heavy_waits[0]:.2f}-{heavy_waits[-1]:.2f} s"
        )
        # within one job's duration of the running jobs' start (plus the time a worker takes to claim a job)
        assert max(after_release.values()) < JOB_S + 0.5, after_release
        before = sorted(runner.started, key=runner.started.get)
        assert set(before[2:4]) == set(singles), "the single jobs were not the next two to start"
