"""A search job with ``backend=ray`` on an existing two-node Ray cluster, given by address only.

The cluster is started with the ``ray`` CLI (``ray start --head`` and ``ray start --address``), each
node with one CPU and a resource naming it; trials go into a real PostgreSQL study. The nodes run
as if on other machines: the test's folders (the data dir with the supernet checkpoint and the
latency table, the job's output dir) do not exist for them, so trials can only get the weights and
the table through Ray's object store.

A trial of the test space takes milliseconds; on the nodes it is made to last 1 s, as a real
space's trial does (see ``tests.cluster.ray_cluster``): with trials shorter than a Ray actor's start,
Ray Tune's actor reuse gives every trial to the first actor up. A floor alone is luck on a busy
machine (a CI run with the cores loaded placed 12 of 12 trials on the head: the worker node's actor
took longer to start than the whole search), so the nodes also meet: no trial returns before one
has begun on each node. Each node has one CPU and the search runs as many trials at once as the
cluster has CPUs, so while the first trial waits, Ray must start an actor on the other node.
"""

from __future__ import annotations

import json

import optuna
import pytest
from mlflow import MlflowClient

from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from nasprune.search.study import make_storage
from tests.cluster import can_hide_paths, ray_cluster
from tests.search.conftest import SPACE, assert_verified_or_too_busy

N_TRIALS = 12


@pytest.mark.slow
def test_trials_run_on_both_nodes_of_a_ray_cluster(prepared, budget, pg_server, tmp_path, tmp_path_factory):
    root, _ = prepared
    storage = pg_server.create_database()
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hide = (tmp_path_factory.getbasetemp(),) if can_hide_paths() else ()

    # refine_trials=0: every trial is a Ray trial (refinement trials run in the driver, after the sampler's)
    # (finetune_steps=0: the placement of trials is what this test is about)
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=N_TRIALS, backend="ray", seed=4, verify_top_k=1,
                    refine_trials=0, finetune_steps=0)  # fmt: skip
    # The worker node's processes start late, as under load: without the rendezvous, the head ran all 12
    # trials before the worker's actor was up ({'head': 12, 'worker1': 0}, in a CI run); with it, the
    # head's trials wait for one to begin on the worker (4 s late here: every Ray worker process of the
    # node sleeps it, so more only makes the test longer).
    slow = {"worker1": 4.0}
    with ray_cluster(
        worker_cpus=[1], head_cpus=1, hide=hide, trial_floor_s=1.0, rendezvous=True, slow_start_s=slow
    ) as cluster:
        if hide:
            assert cluster.path_exists_on_nodes(root) == {"head": False, "worker1": False}
        ctx = JobContext(
            job_id="on-cluster",
            storage_url=storage,
            output_dir=tmp_path / "out",
            data_dir=root,
            tracking_uri=tracking,
            ray_address=cluster.address,
        )
        result = run_job(job, ctx)
        node_ids = cluster.node_ids

    assert result.n_trials == N_TRIALS and result.recommended is not None
    assert_verified_or_too_busy(result.recommended, job.latency_budget_ms)

    study = optuna.load_study(study_name="on-cluster", storage=make_storage(storage))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    placed = [t.user_attrs["ray_node_id"] for t in complete]
    per_node = {name: placed.count(node_id) for name, node_id in node_ids.items()}
    assert set(placed) == set(node_ids.values()), per_node  # trials landed on the head *and* the worker node

    client = MlflowClient(tracking)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(f"nasprune/{SPACE}").experiment_id],
        filter_string="tags.`nasprune.job_id` = 'on-cluster'",
    )
    assert sum(json.loads(parent.data.tags["nasprune.ray_nodes"]).values()) == N_TRIALS
