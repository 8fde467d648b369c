"""Search vs uniform width scaling where the architecture matters: cnn1d_mnist1d (MNIST-1D).

On a trained supernet (``nasprune train --space cnn1d_mnist1d``, cached in the data dir) and the
device's latency table, for budgets of 25% and 50% of the largest subnet's predicted latency:

- the uniform baseline: the most accurate (val) uniform-width subnet ("width multiplier", every
  width fraction at full and at minimum depth) within the budget;
- the search: ``--seeds`` NSGA-II runs of ``--trials`` trials (Optuna backend, seeded with the
  uniform subnets as every job is), each giving its most accurate feasible subnet (val);
- both scored on the held-out test split (selection used val): the margin (searched - uniform, in
  points) per seed with a 95% paired bootstrap interval over the test samples (the noise of one
  test evaluation), and the spread of the margin over seeds (the noise of the search);
- hypervolume (accuracy x latency, reference 1.05 x the largest's latency) of all trials of each
  run vs the uniform points' hypervolume.

    nice -n 10 .venv/bin/python benchmarks/mnist1d_search.py [--space cnn1d_mnist1d] [--trials 60] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _util import write

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.latency import get_table
from nasprune.search import optuna_backend
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.objective import Objective
from nasprune.search.pareto import hypervolume
from nasprune.search.study import journal_url
from nasprune.train import checkpoint_id, get_supernet


@torch.no_grad()
def correct(ev: Evaluator, cfg, split: str = "test") -> np.ndarray:
    x, y = ev.dataset.tensors(split)
    return (ev.subnet(cfg)(x).argmax(1) == y).numpy()


def bootstrap_ci(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="cnn1d_mnist1d")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    args = ap.parse_args()

    supernet, ckpt = get_supernet(args.space, train=False)
    space = supernet.space
    table = get_table(space)
    ev = Evaluator(supernet, load_dataset(space.dataset), checkpoint_id(ckpt))
    largest_ms = table.predict(space.largest())
    ref = 1.05 * largest_ms
    fractions = sorted({w / max(c) for c in space.width_layers().values() for w in c})
    min_depths = {s: min(c) for s, c in space.depth_choices().items()}
    uniform = []
    for f in fractions:
        full = space.uniform(f)
        for cfg in {full, space.config(min_depths, full.widths)}:
            uniform.append((cfg, ev.accuracy(cfg, "val"), table.predict(cfg)))
    hv_uniform = hypervolume([(a, ms) for _, a, ms in uniform], ref)
    largest_test = ev.accuracy(space.largest(), "test")
    print(f"{space.name}: largest {largest_ms:.4f} ms predicted, test accuracy {largest_test:.2%}; "
          f"uniform hypervolume {hv_uniform:.4f}")  # fmt: skip

    out = {"space": space.name, "trials": args.trials, "seeds": args.seeds, "largest_ms": largest_ms,
           "largest_test_accuracy": largest_test, "hv_uniform": hv_uniform, "budgets": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for frac in args.fractions:
            budget = frac * largest_ms
            fits = [u for u in uniform if u[2] <= budget]
            if not fits:
                print(f"{frac:.0%}: no uniform subnet within {budget:.4f} ms")
                continue
            u_cfg, u_val, u_ms = max(fits, key=lambda u: (u[1], -u[2]))
            u_correct = correct(ev, u_cfg)
            runs = []
            for seed in range(args.seeds):
                job = SearchJob(space=space.name, latency_budget_ms=budget, n_trials=args.trials, seed=seed)
                ctx = JobContext(job_id=f"f{frac}-s{seed}", storage_url=journal_url(tmp / "trials.journal"),
                                 output_dir=tmp / f"f{frac}-s{seed}")  # fmt: skip
                recs = []
                optuna_backend.run(Objective(supernet, ev, table, job), job, ctx, recs.append)
                best = max((r for r in recs if r.feasible), key=lambda r: (r.accuracy, -r.latency_ms))
                s_cfg = space.parse_config(best.config)
                s_correct = correct(ev, s_cfg)
                diff = s_correct.astype(float) - u_correct.astype(float)
                lo, hi = bootstrap_ci(diff, seed=seed)
                runs.append({
                    "seed": seed, "val": best.accuracy, "test": float(s_correct.mean()), "ms": best.latency_ms,
                    "uniform_config": s_cfg.key() == u_cfg.key(), "margin_pt": 100 * float(diff.mean()),
                    "margin_ci95_pt": [100 * lo, 100 * hi],
                    "hypervolume": hypervolume([(r.accuracy, r.latency_ms) for r in recs], ref),
                })  # fmt: skip
                r = runs[-1]
                print(f"  {frac:.0%} seed {seed}: searched {r['test']:.2%} test ({r['ms']:.4f} ms) vs uniform "
                      f"{u_correct.mean():.2%} ({u_ms:.4f} ms): {r['margin_pt']:+.2f} pt "
                      f"[{r['margin_ci95_pt'][0]:+.2f}, {r['margin_ci95_pt'][1]:+.2f}]", flush=True)  # fmt: skip
            margins = [r["margin_pt"] for r in runs]
            entry = {
                "fraction": frac, "budget_ms": budget,
                "uniform": {"val": u_val, "test": float(u_correct.mean()), "ms": u_ms, "config": u_cfg.model_dump()},
                "runs": runs,
                "margin_mean_pt": statistics.mean(margins),
                "margin_seed_sd_pt": statistics.stdev(margins) if len(margins) > 1 else 0.0,
                "test_binomial_se_pt": 100 * float(np.sqrt(u_correct.mean() * (1 - u_correct.mean()) / len(u_correct))),
                "hv_search_mean": statistics.mean(r["hypervolume"] for r in runs),
            }  # fmt: skip
            out["budgets"].append(entry)
            print(f"{frac:.0%} of the largest ({budget:.4f} ms): margin {entry['margin_mean_pt']:+.2f} pt "
                  f"(sd over seeds {entry['margin_seed_sd_pt']:.2f}; one test evaluation's SE "
                  f"{entry['test_binomial_se_pt']:.2f} pt); hypervolume {entry['hv_search_mean']:.4f} vs uniform "
                  f"{hv_uniform:.4f}")  # fmt: skip
    out["command"] = "benchmarks/mnist1d_search.py " + " ".join(sys.argv[1:])
    write(f"mnist1d_search_{space.name}", out)


if __name__ == "__main__":
    main()
