"""Which validation statistic picks the subnet that is best on the test split?

The search keeps the Pareto front of (validation accuracy, cost); the job then recommends one
candidate within the budget. Validation accuracy on a few hundred images is noisy, so this script
measures, on one trained supernet, how good each selection rule of :mod:`nasprune.search.select`
is at picking what the *test* split prefers:

1. sample N random subnets plus the uniform-width ones and score each on validation and test
   (per example: right/wrong and cross-entropy);
2. for each of B budgets spread over the cost range, take the front (validation accuracy vs cost)
   of the subnets within the budget, let each rule pick one, and record the pick's test accuracy
   and its regret (the best test accuracy on that front minus the pick's);
3. print and write the mean test accuracy and regret per rule, with the standard error over budgets
   and the paired difference of each rule against "accuracy" (the rule used before).

The cost axis is MACs (from the graph, exact and free), not predicted latency: the question is how
to choose among front candidates, which does not depend on the cost model, and a latency table
takes minutes to build. The supernet is trained into the data dir on first use.

    .venv/bin/python benchmarks/selection.py [--space resnet_mnist] [--subnets 300] [--budgets 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _util import write

from nasprune.cli._common import table as fmt
from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.search.pareto import pareto_indices
from nasprune.search.select import RULES, rank
from nasprune.train import checkpoint_id, get_supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="resnet_mnist")
    ap.add_argument("--subnets", type=int, default=300, help="random subnets scored (plus the uniform widths)")
    ap.add_argument("--budgets", type=int, default=40, help="budgets spread over the subnets' MACs range")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    supernet, ckpt = get_supernet(args.space)
    space = supernet.space
    ev = Evaluator(supernet, load_dataset(space.dataset), checkpoint_id(ckpt))
    rng = np.random.default_rng(args.seed)
    configs = {}
    fractions = sorted({w / max(c) for c in space.width_layers().values() for w in c})
    for f in fractions:
        cfg = space.uniform(f)
        configs[cfg.key()] = cfg
    while len(configs) < args.subnets + len(fractions):
        cfg = space.sample(rng)
        configs[cfg.key()] = cfg
    cfgs = list(configs.values())
    val, test, macs = [], [], []
    for i, cfg in enumerate(cfgs):
        val.append(ev.per_example(cfg, "val"))
        test.append(ev.per_example(cfg, "test"))
        macs.append(supernet.macs(cfg))
        if (i + 1) % 50 == 0:
            print(f"scored {i + 1}/{len(cfgs)} subnets ({time.perf_counter() - t0:.0f} s)", flush=True)
    macs = np.array(macs, dtype=float)
    test_acc = np.array([t.accuracy for t in test])
    val_acc = np.array([v.accuracy for v in val])

    lo, hi = np.quantile(macs, 0.05), np.quantile(macs, 0.95)
    budgets = np.linspace(lo, hi, args.budgets)
    picks: dict[str, list[float]] = {r: [] for r in RULES}
    regrets: dict[str, list[float]] = {r: [] for r in RULES}
    front_sizes, tied_sizes = [], []
    for b in budgets:
        within = [i for i in range(len(cfgs)) if macs[i] <= b]
        pts = [(val_acc[i], macs[i]) for i in within]
        front = [within[j] for j in pareto_indices(pts)]
        front_sizes.append(len(front))
        best_test = max(test_acc[i] for i in front)
        for rule in RULES:
            order = rank(front, lambda i: val[i], lambda i: macs[i], b, rule=rule)
            i, sel = order[0]
            picks[rule].append(test_acc[i])
            regrets[rule].append(best_test - test_acc[i])
            if rule == "loss-tied":
                tied_sizes.append(sum(s.tied for _, s in order))

    n_val, n_test = len(val[0].correct), len(test[0].correct)
    base = np.array(picks["accuracy"])
    summary = {}
    rows = []
    for rule in RULES:
        p, r = np.array(picks[rule]), np.array(regrets[rule])
        d = p - base
        summary[rule] = {
            "mean_test_accuracy": float(p.mean()),
            "se_over_budgets": float(p.std(ddof=1) / np.sqrt(len(p))),
            "mean_regret": float(r.mean()),
            "regret_se": float(r.std(ddof=1) / np.sqrt(len(r))),
            "vs_accuracy_rule": float(d.mean()),
            "vs_accuracy_rule_se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "budgets_better": int((d > 0).sum()),
            "budgets_worse": int((d < 0).sum()),
        }
        s = summary[rule]
        rows.append([
            rule, f"{100 * s['mean_test_accuracy']:.2f} ± {100 * s['se_over_budgets']:.2f}",
            f"{100 * s['mean_regret']:.2f} ± {100 * s['regret_se']:.2f}",
            f"{100 * s['vs_accuracy_rule']:+.2f} ± {100 * s['vs_accuracy_rule_se']:.2f}",
            f"{s['budgets_better']}/{s['budgets_worse']}",
        ])  # fmt: skip
    # how well each validation statistic orders subnets by test accuracy, over all scored subnets
    from scipy.stats import spearmanr

    val_loss = np.array([float(v.loss.mean()) for v in val])
    corr = {
        "val_accuracy": float(spearmanr(val_acc, test_acc).statistic),
        "neg_val_loss": float(spearmanr(-val_loss, test_acc).statistic),
    }
    print(f"\n{args.space}: {len(cfgs)} subnets, {n_val} validation / {n_test} test images, "
          f"{len(budgets)} MACs budgets; front within a budget: median {int(np.median(front_sizes))} candidates, "
          f"tied with the most accurate (McNemar p >= 0.05): median {int(np.median(tied_sizes))}")  # fmt: skip
    print(fmt(rows, ["rule", "test acc. of pick (%)", "regret (pt)", "vs 'accuracy' (pt)", "budgets better/worse"]))
    print(f"Spearman with test accuracy over all subnets: val accuracy {corr['val_accuracy']:.3f}, "
          f"-val loss {corr['neg_val_loss']:.3f}")  # fmt: skip
    write(
        f"selection_{args.space}",
        {
            "command": "benchmarks/selection.py " + " ".join(sys.argv[1:]),
            "space": args.space,
            "subnets": len(cfgs),
            "n_val": n_val,
            "n_test": n_test,
            "budgets": len(budgets),
            "front_size_median": float(np.median(front_sizes)),
            "tied_size_median": float(np.median(tied_sizes)),
            "rules": summary,
            "spearman_with_test": corr,
            "wall_s": time.perf_counter() - t0,
        },
    )


if __name__ == "__main__":
    main()
