"""What Ray costs and buys on a small machine: the same search, in-process vs a local Ray cluster.

One search (space, budget, sampler, seed and N trials fixed) is run through ``run_job`` with

- ``optuna``: the in-process backend (trials one after another in this process);
- ``ray-1`` / ``ray-2``: the Ray backend on a local cluster started with the ``ray`` CLI — a head
  with no CPUs (it only schedules) and 1 or 2 worker nodes of 1 CPU each; the job is given the
  cluster's address, as a deployed worker is.

in two regimes:

- ``real``: the space's own trials. For ``mlp_digits`` a trial takes a few milliseconds, so the
  figures show Ray's per-trial and start-up overhead;
- ``floor``: every accuracy evaluation made to last ``--floor-s`` seconds of CPU work (a busy loop,
  in whichever process evaluates), standing in for a real space's trial; this shows what a second
  node buys when trials are real work.

Reported per run: total wall time of the job (supernet and table loading, Ray connection, trials,
verification), the time to the first trial (loading, Ray connection, searcher set-up), the search
phase (first trial asked to last trial told, so it includes starting Ray's trial actors), trials/s
over the search phase, and trials per Ray node. Cluster start-up time is reported apart. The
supernet and the latency table are prepared once (quick recipe, as in the tests) in ``--data-dir``.

    .venv/bin/python benchmarks/scale.py [--trials 200] [--floor-trials 40] [--floor-s 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.cluster
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write

from nasprune.cli._common import table as grid

ROOT = Path(__file__).resolve().parent.parent
SPACE = "mlp_digits"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def prepare(root: Path):
    """A trained supernet and a latency table for SPACE in ``root`` (quick recipe), reused if present."""
    from nasprune.latency import ProfileSettings, build_table, table_path
    from nasprune.latency.table import LatencyTable
    from nasprune.registry import load_space
    from nasprune.train import TrainConfig, save_checkpoint, supernet_path, train_supernet

    space = load_space(SPACE)
    ckpt, tpath = supernet_path(space, root), table_path(SPACE, "local-cpu", root)
    if not ckpt.is_file():
        print(f"training the {SPACE} supernet (quick recipe) ...", flush=True)
        res = train_supernet(space, TrainConfig(epochs=8, warmup_epochs=2, batch_size=64, max_shift=0), progress=False)
        save_checkpoint(res.supernet, ckpt)
    if not tpath.is_file():
        print(f"building the {SPACE} latency table (quick settings) ...", flush=True)
        settings = ProfileSettings(op_rounds=10, op_burst=5, e2e_rounds=8, e2e_burst=10, warmup=5)
        build_table(space, n_fit=8, n_validate=6, settings=settings).save(tpath)
    return LatencyTable.model_validate_json(tpath.read_text())


def burn_floor(floor_s: float):
    """Make this process's accuracy evaluations last ``floor_s`` of CPU work; returns an undo function."""
    import nasprune.evaluate

    original = nasprune.evaluate.Evaluator.accuracy

    def accuracy(self, *args, **kwargs):
        end = time.perf_counter() + floor_s
        value = original(self, *args, **kwargs)
        while time.perf_counter() < end:
            pass
        return value

    nasprune.evaluate.Evaluator.accuracy = accuracy
    return lambda: setattr(nasprune.evaluate.Evaluator, "accuracy", original)


def run_one(label: str, backend: str, n_trials: int, budget: float, data: Path, work: Path, address=None) -> dict:
    import optuna

    from nasprune.search.job import JobContext, SearchJob
    from nasprune.search.runner import run_job
    from nasprune.search.study import journal_url, make_storage

    storage = journal_url(work / f"{label}.journal")
    job = SearchJob(space=SPACE, latency_budget_ms=budget, n_trials=n_trials, backend=backend, seed=0, verify_top_k=1)
    ctx = JobContext(
        job_id=label,
        storage_url=storage,
        output_dir=work / label,
        data_dir=data,
        ray_address=address,
    )
    started = datetime.now()
    t0 = time.perf_counter()
    result = run_job(job, ctx)
    total = time.perf_counter() - t0
    trials = optuna.load_study(study_name=label, storage=make_storage(storage)).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    first = min(t.datetime_start for t in done)
    search_s = (max(t.datetime_complete for t in done) - first).total_seconds()
    nodes: dict[str, int] = {}
    for t in done:
        node = t.user_attrs.get("ray_node_id")
        if node:
            nodes[node] = nodes.get(node, 0) + 1
    return {
        "label": label,
        "backend": backend,
        "n_trials": result.n_trials,
        "total_s": round(total, 2),
        "search_s": round(search_s, 2),
        "trials_per_s": round(len(done) / search_s, 2),
        "to_first_trial_s": round((first - started).total_seconds(), 2),
        "trials_per_node": sorted(nodes.values(), reverse=True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200, help="trials per run, real regime (%(default)s)")
    ap.add_argument("--floor-trials", type=int, default=40, help="trials per run, floor regime (%(default)s)")
    ap.add_argument("--floor-s", type=float, default=0.5, help="CPU seconds per trial, floor regime (%(default)s)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="Ray worker node counts (%(default)s)")
    ap.add_argument(
        "--data-dir", type=Path, default=ROOT / ".nasprune" / "bench-scale", help="prepared supernet and table"
    )
    args = ap.parse_args()

    from tests.cluster import ray_cluster

    table = prepare(args.data_dir)
    budget = table.min_latency() + 0.5 * (table.max_latency() - table.min_latency())
    rows, cluster_start = [], {}
    with tempfile.TemporaryDirectory(prefix="nasprune-scale-") as tmp:
        work = Path(tmp)
        for regime, n, floor in (("real", args.trials, 0.0), ("floor", args.floor_trials, args.floor_s)):
            undo = burn_floor(floor) if floor else None
            try:
                print(f"[{regime}] optuna, {n} trials ...", flush=True)
                rows.append({"regime": regime, **run_one(f"{regime}-optuna", "optuna", n, budget, args.data_dir, work)})
            finally:
                if undo:
                    undo()
            for k in args.nodes:
                print(f"[{regime}] ray, {k} worker node(s), {n} trials ...", flush=True)
                t0 = time.perf_counter()
                with ray_cluster(
                    worker_cpus=[1] * k, head_cpus=0, trial_floor_s=floor, trial_floor_mode="burn"
                ) as cluster:
                    cluster_start.setdefault(k, round(time.perf_counter() - t0, 1))
                    label = f"{regime}-ray-{k}"
                    row = run_one(label, "ray", n, budget, args.data_dir, work, address=cluster.address)
                rows.append({"regime": regime, "ray_worker_nodes": k, **row})

    header = ["regime", "run", "trials", "total s", "to 1st trial s", "search s", "trials/s", "trials per node"]
    print()
    print(
        grid(
            [
                [
                    r["regime"],
                    r["label"].split("-", 1)[1],
                    r["n_trials"],
                    r["total_s"],
                    r["to_first_trial_s"],
                    r["search_s"],
                    r["trials_per_s"],
                    ",".join(map(str, r["trials_per_node"])) or "-",
                ]
                for r in rows
            ],
            header,
        )
    )
    print(f"\nRay cluster start (ray start head + worker nodes, until all nodes are up): {cluster_start} s")
    write(
        "scale",
        {
            "space": SPACE,
            "budget_ms": budget,
            "sampler": "nsga2",
            "floor_s": args.floor_s,
            "cluster": "head with 0 CPUs + N worker nodes of 1 CPU each, started with the ray CLI on this machine",
            "cluster_start_s": cluster_start,
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
