"""Does the supernet rank subnets like standalone training would?

For each space: train the supernet once (sandwich rule + in-place distillation), report val/test
accuracy of the largest and smallest subnet, then for K subnets spread over the space (by MACs,
largest and smallest included) compare the inherited accuracy (shared weights, BN recalibrated)
with the same architecture trained from scratch on the same recipe: each pair, the mean gap
(standalone - inherited, in points) and Kendall's tau between the two rankings.

    .venv/bin/python benchmarks/supernet_quality.py [--spaces resnet_mnist mlp_digits] [--k 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _util import write
from scipy.stats import kendalltau

from nasprune.cli._common import table
from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.registry import create_supernet, load_space
from nasprune.train import default_recipe, standalone_accuracy, train_standalone, train_supernet


def spread(space, k: int, seed: int = 0):
    """Largest, smallest and k-2 random subnets at evenly spaced MAC quantiles."""
    net = create_supernet(space)
    rng = np.random.default_rng(seed)
    pool = sorted({space.sample(rng) for _ in range(400)}, key=net.macs)
    ends = {space.largest(), space.smallest()}
    pool = [c for c in pool if c not in ends]
    picks = [pool[int(q)] for q in np.linspace(0, len(pool) - 1, k - 2)]
    return [space.largest(), *picks, space.smallest()]


def run_space(name: str, k: int, epochs: int | None, split: str) -> dict:
    space = load_space(name)
    recipe = default_recipe(name)
    if epochs:
        recipe = recipe.model_copy(update={"epochs": epochs})
    ds = load_dataset(space.dataset)
    print(f"\n== {name}: recipe {recipe.model_dump()}")
    res = train_supernet(space, recipe)
    ev = Evaluator(res.supernet, ds)
    net = res.supernet
    summary = {
        "train_seconds": round(res.seconds, 1),
        "largest": {"val": ev.accuracy(space.largest(), "val"), "test": ev.accuracy(space.largest(), "test")},
        "smallest": {"val": ev.accuracy(space.smallest(), "val"), "test": ev.accuracy(space.smallest(), "test")},
    }
    pairs, rows = [], []
    t0 = time.perf_counter()
    for cfg in spread(space, k):
        model = train_standalone(space, cfg, recipe, ds)
        inh, alone = ev.accuracy(cfg, split), standalone_accuracy(model, ds, split)
        pairs.append(
            {
                "key": cfg.key(),
                "macs": net.macs(cfg),
                "params": net.num_params(cfg),
                "inherited": inh,
                "standalone": alone,
                "config": cfg.model_dump(),
            }
        )
        rows.append([cfg.key(), f"{net.macs(cfg):,}", f"{inh:.2%}", f"{alone:.2%}", f"{(alone - inh) * 100:+.2f}"])
        print(rows[-1])
    inh = np.array([p["inherited"] for p in pairs])
    alone = np.array([p["standalone"] for p in pairs])
    tau = kendalltau(inh, alone).statistic
    summary.update(
        {
            "split": split,
            "pairs": pairs,
            "kendall_tau": float(tau),
            "mean_gap_pts": float((alone - inh).mean() * 100),
            "standalone_seconds": round(time.perf_counter() - t0, 1),
        }
    )
    print(table(rows, ["subnet", "MACs", f"inherited ({split})", f"standalone ({split})", "gap pts"]))
    print(
        f"{name}: largest val {summary['largest']['val']:.2%} test {summary['largest']['test']:.2%}; "
        f"smallest val {summary['smallest']['val']:.2%} test {summary['smallest']['test']:.2%}; "
        f"Kendall tau {tau:.3f}; mean gap {summary['mean_gap_pts']:+.2f} pts; "
        f"supernet {res.seconds:.0f} s, standalone {summary['standalone_seconds']:.0f} s"
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["resnet_mnist", "mlp_digits"])
    ap.add_argument("--k", type=int, default=8, help="subnets compared per space (default %(default)s)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (all spaces)")
    ap.add_argument("--split", default="test", choices=["val", "test"], help="split for the pairs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {name: run_space(name, args.k, args.epochs, args.split) for name in args.spaces}
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f} s")
    write(
        "supernet_quality",
        {
            "command": "benchmarks/supernet_quality.py " + " ".join(sys.argv[1:]),
            "total_seconds": round(total, 1),
            "spaces": out,
        },
    )


if __name__ == "__main__":
    main()
