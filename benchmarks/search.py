"""Search speed and quality on a trained supernet (default resnet_mnist; trained once into the data dir).

Prints and writes JSON:
- Optuna backend: trials/s and the share of search time spent outside the forward passes
  (BN recalibration + validation inference) — the "machinery" — also in ms per trial, with the
  number of distinct architectures scored (a sampler proposing one again costs no forward pass);
- hypervolume of the front after N trials for nsga2, tpe and random (3 seeds each) against the
  uniform width-scaling baseline ("width multiplier", every width fraction at full and at minimum
  depth), and how many baseline points the searched front dominates;
- the Ray backend's wall time for the same job vs the Optuna backend (overhead ratio).

    .venv/bin/python benchmarks/search.py [--space resnet_mnist] [--trials 60] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _util import write

import nasprune.evaluate as evaluate
from nasprune.cli._common import table as fmt
from nasprune.data import load_dataset
from nasprune.latency import get_table
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.pareto import dominates, hypervolume, pareto_indices
from nasprune.search.runner import run_job
from nasprune.search.study import journal_url, load_trials
from nasprune.train import checkpoint_id, get_supernet

FORWARD = {"s": 0.0}


def _timed(fn):
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            FORWARD["s"] += time.perf_counter() - t0

    return wrapper


# Instrumentation only: count the time spent in forward passes (recalibration + inference).
evaluate.recalibrate_bn = _timed(evaluate.recalibrate_bn)
evaluate.accuracy_of = _timed(evaluate.accuracy_of)


def search(space: str, budget: float, n: int, sampler: str, seed: int, backend: str, tmp: Path, tag: str):
    job = SearchJob(space=space, latency_budget_ms=budget, n_trials=n, sampler=sampler, seed=seed, backend=backend)
    storage = journal_url(tmp / "trials.journal")
    phases: dict[str, float] = {}

    forward_at: dict[str, float] = {}

    def on_progress(p):
        phases.setdefault(p.stage, time.perf_counter())
        forward_at.setdefault(p.stage, FORWARD["s"])  # verification's own forward passes are not search

    FORWARD["s"] = 0.0
    t0 = time.perf_counter()
    res = run_job(job, JobContext(job_id=tag, storage_url=storage, output_dir=tmp / tag, on_progress=on_progress))
    search_s = phases.get("verifying", time.perf_counter()) - phases["searching"]
    forward_s = forward_at.get("verifying", FORWARD["s"]) - forward_at["searching"]
    return (
        res,
        load_trials(storage, tag),
        {"total_s": time.perf_counter() - t0, "search_s": search_s, "forward_s": forward_s},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="resnet_mnist")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--budget-fraction",
        type=float,
        default=0.4,
        help="budget = min + fraction * (max - min) of the table's latency range",
    )
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    supernet, ckpt = get_supernet(args.space)
    table = get_table(args.space)
    lo, hi = table.min_latency(), table.max_latency()
    budget = lo + args.budget_fraction * (hi - lo)
    print(f"{args.space}: latency range {lo:.4f}-{hi:.4f} ms, budget {budget:.4f} ms, {args.trials} trials")

    # uniform width scaling: every fraction, at full and at min depth, scored like a trial
    ev = evaluate.Evaluator(supernet, load_dataset(supernet.space.dataset), checkpoint_id(ckpt))
    fractions = sorted({w / max(c) for c in supernet.space.width_layers().values() for w in c})
    min_depths = {s: min(c) for s, c in supernet.space.depth_choices().items()}
    uniform = []
    for f in fractions:
        full = supernet.space.uniform(f)
        for cfg in {full, supernet.space.config(min_depths, full.widths)}:
            uniform.append((ev.accuracy(cfg, "val"), table.predict(cfg)))
    ref = hi * 1.05
    hv_uniform = hypervolume(uniform, ref)
    hv_uniform_budget = hypervolume([p for p in uniform if p[1] <= budget], budget)

    runs, rows = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for sampler in ("nsga2", "tpe", "random"):
            for seed in range(args.seeds):
                res, trials, t = search(
                    args.space, budget, args.trials, sampler, seed, "optuna", tmp, f"{sampler}-{seed}"
                )
                pts = [(r.accuracy, r.latency_ms) for r in trials]
                feasible = [p for p in pts if p[1] <= budget]
                front = [feasible[i] for i in pareto_indices(feasible)]
                in_budget = [u for u in uniform if u[1] <= budget]
                covered = sum(any(dominates(f, u) or f == u for f in front) for u in in_budget)
                rec = {
                    "sampler": sampler,
                    "seed": seed,
                    "trials": len(trials),
                    "trials_per_s": len(trials) / t["search_s"],
                    "machinery_share": 1 - t["forward_s"] / t["search_s"],
                    "machinery_ms_per_trial": 1000 * (t["search_s"] - t["forward_s"]) / len(trials),
                    "architectures": len({r.subnet_key for r in trials}),
                    "hypervolume": hypervolume(pts, ref),
                    "hypervolume_in_budget": hypervolume(feasible, budget),
                    "uniform_points_dominated": covered,
                    "uniform_points_in_budget": len(in_budget),
                    "best_in_budget": res.recommended.accuracy if res.recommended else None,
                    "best_measured_ms": res.recommended.measured_latency_ms if res.recommended else None,
                    **{k: round(v, 2) for k, v in t.items()},
                }
                runs.append(rec)
                rows.append(
                    [
                        sampler,
                        seed,
                        f"{rec['trials_per_s']:.2f}",
                        f"{rec['machinery_share']:.1%}",
                        f"{rec['machinery_ms_per_trial']:.1f}",
                        rec["architectures"],
                        f"{rec['hypervolume']:.4f}",
                        f"{rec['hypervolume_in_budget']:.4f}",
                        f"{covered}/{len(in_budget)}",
                        f"{rec['best_in_budget']:.2%}" if rec["best_in_budget"] else "-",
                    ]
                )
                print(rows[-1], flush=True)
        ray = None
        if not args.no_ray:
            _, _, t_opt = search(args.space, budget, args.trials, "nsga2", 100, "optuna", tmp, "cmp-optuna")
            _, _, t_ray = search(args.space, budget, args.trials, "nsga2", 100, "ray", tmp, "cmp-ray")
            ray = {
                "optuna_search_s": t_opt["search_s"],
                "ray_search_s": t_ray["search_s"],
                "optuna_total_s": t_opt["total_s"],
                "ray_total_s": t_ray["total_s"],
                "overhead_ratio": t_ray["search_s"] / t_opt["search_s"],
            }

    print()
    print(
        fmt(
            rows,
            [
                "sampler",
                "seed",
                "trials/s",
                "machinery",
                "machinery ms/trial",
                "architectures",
                "HV (all)",
                "HV (in budget)",
                "uniform dominated",
                "best in budget",
            ],
        )
    )
    summary = {}
    for sampler in ("nsga2", "tpe", "random"):
        rs = [r for r in runs if r["sampler"] == sampler]
        summary[sampler] = {
            k: float(np.mean([r[k] for r in rs]))
            for k in (
                "trials_per_s",
                "machinery_share",
                "machinery_ms_per_trial",
                "architectures",
                "hypervolume",
                "hypervolume_in_budget",
            )
        }
        m = summary[sampler]
        print(
            f"{sampler:7s} mean: {m['trials_per_s']:.2f} trials/s, machinery {m['machinery_share']:.1%} "
            f"({m['machinery_ms_per_trial']:.1f} ms/trial, {m['architectures']:.0f} distinct architectures), "
            f"HV {m['hypervolume']:.4f} (uniform scaling {hv_uniform:.4f}), "
            f"HV in budget {m['hypervolume_in_budget']:.4f} (uniform {hv_uniform_budget:.4f})"
        )
    if ray:
        print(
            f"ray vs optuna ({args.trials} trials, nsga2): search {ray['ray_search_s']:.1f} s vs "
            f"{ray['optuna_search_s']:.1f} s -> overhead x{ray['overhead_ratio']:.2f}"
        )
    write(
        "search",
        {
            "command": "benchmarks/search.py " + " ".join(sys.argv[1:]),
            "space": args.space,
            "budget_ms": budget,
            "latency_range_ms": [lo, hi],
            "uniform": uniform,
            "hv_uniform": hv_uniform,
            "hv_uniform_in_budget": hv_uniform_budget,
            "runs": runs,
            "summary": summary,
            "ray": ray,
        },
    )


if __name__ == "__main__":
    main()
