"""Which validation statistic picks the subnet that is best on the test split?

The search keeps the Pareto front of (validation accuracy, cost); the job then recommends one
candidate within the budget. Validation accuracy on a few hundred images is noisy, so this script
measures, on one trained supernet, how good each selection rule of :mod:`nasprune.search.select`
is at picking what the *test* split prefers:

1. sample N random subnets plus the uniform-width ones and score each on validation and test
   (per example: right/wrong and cross-entropy);
2. simulate R searches: each draws T of them (plus the uniform widths, which the search seeds);
   for each of B budgets spread over the cost range, take that search's front (validation
   accuracy vs cost) within the budget, let each rule pick one, and record the pick's test accuracy
   and its regret (the best test accuracy on that front minus the pick's);
3. print and write the mean test accuracy and regret per rule, with the standard error over the
   simulated searches (they share the pool of N subnets: a lower bound on the noise), and the
   paired difference of each rule against "accuracy" (the rule used before).

The cost axis is MACs (from the graph, exact and free), not predicted latency: the question is how
to choose among front candidates, which does not depend on the cost model, and a latency table
takes minutes to build. The supernet is trained into the data dir on first use.

    .venv/bin/python benchmarks/selection.py [--space resnet_mnist] [--subnets 300] [--budgets 40]
        [--trials 60] [--replicates 50] [--epochs N]
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
    ap.add_argument("--trials", type=int, default=60, help="subnets per simulated search (drawn from the scored ones)")
    ap.add_argument("--replicates", type=int, default=50, help="simulated searches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train a supernet with the default recipe cut to this many epochs (its own checkpoint) instead of "
        "using the space's default supernet: quicker on a busy machine; the question is the selection rule",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.epochs is None:
        supernet, ckpt = get_supernet(args.space)
    else:
        from nasprune.registry import load_space
        from nasprune.train import default_recipe, load_checkpoint, supernet_path, train_supernet

        sp = load_space(args.space)
        ckpt = supernet_path(sp).with_suffix(f".e{args.epochs}.pt")
        if not ckpt.is_file():  # resumable: a killed run continues from its last epoch
            recipe = default_recipe(sp).model_copy(update={"epochs": args.epochs})
            train_supernet(sp, recipe, load_dataset(sp.dataset), checkpoint=ckpt)
        supernet = load_checkpoint(ckpt, sp)
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
    uniform_idx = list(range(len(fractions)))  # the search seeds the uniform widths: always among the trials
    others = np.arange(len(fractions), len(cfgs))
    per_rep = {r: [] for r in RULES}  # mean test accuracy of the picks over the budgets, per replicate
    per_rep_regret = {r: [] for r in RULES}
    front_sizes, tied_sizes, disagree = [], [], 0
    for _ in range(args.replicates):
        trials = uniform_idx + list(rng.choice(others, size=min(args.trials, len(others)), replace=False))
        picks = {r: [] for r in RULES}
        regrets = {r: [] for r in RULES}
        for b in budgets:
            within = [i for i in trials if macs[i] <= b]
            if not within:
                continue
            pts = [(val_acc[i], macs[i]) for i in within]
            front = [within[j] for j in pareto_indices(pts)]
            front_sizes.append(len(front))
            best_test = max(test_acc[i] for i in front)
            chosen = {}
            for rule in RULES:
                order = rank(front, lambda i: val[i], lambda i: macs[i], b, rule=rule)
                i, _ = order[0]
                chosen[rule] = i
                picks[rule].append(test_acc[i])
                regrets[rule].append(best_test - test_acc[i])
                if rule == "loss-tied":
                    tied_sizes.append(sum(s.tied for _, s in order))
            disagree += int(chosen["loss-tied"] != chosen["accuracy"])
        for rule in RULES:
            per_rep[rule].append(float(np.mean(picks[rule])))
            per_rep_regret[rule].append(float(np.mean(regrets[rule])))

    n_val, n_test = len(val[0].correct), len(test[0].correct)
    base = np.array(per_rep["accuracy"])
    summary = {}
    rows = []
    k = args.replicates
    for rule in RULES:
        p, r = np.array(per_rep[rule]), np.array(per_rep_regret[rule])
        d = p - base
        summary[rule] = {
            "mean_test_accuracy": float(p.mean()),
            "se_over_replicates": float(p.std(ddof=1) / np.sqrt(k)),
            "mean_regret": float(r.mean()),
            "regret_se": float(r.std(ddof=1) / np.sqrt(k)),
            "vs_accuracy_rule": float(d.mean()),
            "vs_accuracy_rule_se": float(d.std(ddof=1) / np.sqrt(k)),
            "replicates_better": int((d > 0).sum()),
            "replicates_worse": int((d < 0).sum()),
        }
        s = summary[rule]
        rows.append([
            rule, f"{100 * s['mean_test_accuracy']:.2f} ± {100 * s['se_over_replicates']:.2f}",
            f"{100 * s['mean_regret']:.2f} ± {100 * s['regret_se']:.2f}",
            f"{100 * s['vs_accuracy_rule']:+.3f} ± {100 * s['vs_accuracy_rule_se']:.3f}",
            f"{s['replicates_better']}/{s['replicates_worse']}",
        ])  # fmt: skip
    # how well each validation statistic orders subnets by test accuracy, over all scored subnets
    from scipy.stats import spearmanr

    val_loss = np.array([float(v.loss.mean()) for v in val])
    corr = {
        "val_accuracy": float(spearmanr(val_acc, test_acc).statistic),
        "neg_val_loss": float(spearmanr(-val_loss, test_acc).statistic),
    }
    print(f"\n{args.space}: {len(cfgs)} subnets, {n_val} validation / {n_test} test images, "
          f"{args.replicates} simulated searches of {args.trials} trials x {len(budgets)} MACs budgets "
          f"({disagree} decisions where 'loss-tied' and 'accuracy' disagree); "
          f"front within a budget: median {int(np.median(front_sizes))} candidates, "
          f"tied with the most accurate (McNemar p >= 0.05): median {int(np.median(tied_sizes))}")  # fmt: skip
    print(fmt(rows, ["rule", "test acc. of pick (%)", "regret (pt)", "vs 'accuracy' (pt)", "searches better/worse"]))
    print(f"Spearman with test accuracy over all subnets: val accuracy {corr['val_accuracy']:.3f}, "
          f"-val loss {corr['neg_val_loss']:.3f}")  # fmt: skip
    write(
        f"selection_{args.space}",
        {
            "command": "benchmarks/selection.py " + " ".join(sys.argv[1:]),
            "supernet_epochs": args.epochs,
            "space": args.space,
            "subnets": len(cfgs),
            "n_val": n_val,
            "n_test": n_test,
            "budgets": len(budgets),
            "trials": args.trials,
            "replicates": args.replicates,
            "decisions_where_loss_tied_and_accuracy_disagree": disagree,
            "front_size_median": float(np.median(front_sizes)),
            "tied_size_median": float(np.median(tied_sizes)),
            "rules": summary,
            "spearman_with_test": corr,
            "wall_s": time.perf_counter() - t0,
        },
    )


if __name__ == "__main__":
    main()
