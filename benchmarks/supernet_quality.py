"""Does the supernet rank subnets like standalone training would?

For each space: train the supernet once (sandwich rule + in-place distillation), report val/test
accuracy of the largest and smallest subnet, then for K subnets spread over the space (by MACs,
largest and smallest included) compare the inherited accuracy (shared weights, BN recalibrated)
with the same architecture trained from scratch on the same recipe: each pair, the mean gap
(standalone - inherited, in points) and Kendall's tau between the two rankings.

The K subnets sit at evenly spaced log(MACs). Pairs are scored on the held-out images (val + test,
1,500 for mnist5k, 540 for digits; tau on val and on test alone is written too): on MNIST the
subnets differ by tenths of a point, and one test image is 0.1 pt. Standalone trainings run on
``--workers`` single-threaded processes; ``--seeds N`` averages N trainings per subnet.
``--train-samples N`` trains both on a stratified subset of N training samples (fixed seed; val and
test unchanged): a harder task, where the subnets of an easy one all score alike (MNIST-1D's
published table is for 4,000 training sequences). ``--fresh-samples N`` (generated datasets only:
``mnist1d``) scores every pair on N newly generated sequences as well (split ``fresh``; the
generator's seed differs from the dataset's, normalised with the train statistics): with 3,000 held-out
sequences one subnet's accuracy moves ~0.3 pt between test sets, as much as the top subnets differ.
``--reuse-standalone JSON`` takes the standalone runs from an earlier results file (same subnets,
recipe and splits), so supernet variants are compared against one fixed reference.

    .venv/bin/python benchmarks/supernet_quality.py [--spaces resnet_mnist mlp_digits] [--k 8] [--seeds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _util import write
from scipy.stats import kendalltau
from tqdm import tqdm

from nasprune.cli._common import table
from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.registry import create_supernet, load_space
from nasprune.train import TrainConfig, default_recipe, standalone_accuracy, train_standalone, train_supernet


def spread(space, k: int, seed: int = 0, how: str = "log-macs"):
    """Largest, smallest and k-2 random subnets in between.

    ``log-macs``: the random subnets closest to k-2 evenly spaced points of log(MACs) between the
    smallest and the largest subnet (so small subnets, where accuracy moves fastest, are not
    crowded out by the many mid-sized ones); ``quantile``: evenly spaced MAC quantiles of the pool.
    """
    net = create_supernet(space)
    rng = np.random.default_rng(seed)
    ends = {space.largest(), space.smallest()}
    # sorted by MACs, then key: a set's order changes from run to run (string hashing)
    pool = sorted({space.sample(rng) for _ in range(2000)} - ends, key=lambda c: (net.macs(c), c.key()))
    if how == "quantile":
        picks = [pool[int(q)] for q in np.linspace(0, len(pool) - 1, k - 2)]
    else:
        logs = np.log([net.macs(c) for c in pool])
        targets = np.linspace(np.log(net.macs(space.smallest())), np.log(net.macs(space.largest())), k)[1:-1]
        picks = []
        for t in targets:
            order = np.argsort(np.abs(logs - t))
            picks.append(next(pool[i] for i in order if pool[i] not in picks))
    return [space.largest(), *picks, space.smallest()]


def heldout(acc: dict[str, float], sizes: dict[str, int]) -> float:
    """Accuracy over val + test together (both held out from training): more images, less noise."""
    return (acc["val"] * sizes["val"] + acc["test"] * sizes["test"]) / (sizes["val"] + sizes["test"])


def subsample_train(ds, n: int | None, seed: int = 0):
    """``ds`` with its train split cut to a stratified subset of ``n`` samples (all if None)."""
    if n is None:
        return ds
    x, y = ds.tensors("train")
    if not 0 < n <= len(y):
        raise SystemExit(f"--train-samples must be in 1..{len(y)} (the train split of {ds.name})")
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    keep = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keep.append(idx[: round(n * len(idx) / len(labels))])
    keep = np.sort(np.concatenate(keep))
    return dataclasses.replace(ds, splits={**ds.splits, "train": (x[keep], y[keep])}, info=None)


FRESH_SEED = 4242  # mnist1d's generator seed for --fresh-samples (the dataset's own is 42)


def add_fresh(ds, n: int | None):
    """``ds`` with a ``fresh`` split of ``n`` newly generated sequences (mnist1d only; none if None)."""
    if not n:
        return ds
    if ds.name != "mnist1d":
        raise SystemExit(f"--fresh-samples needs a generated dataset (mnist1d), not {ds.name}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = n, FRESH_SEED
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    norm = ds.info.normalization  # global mean/std of the train split
    x = (x - norm.mean[0]) / norm.std[0]
    fresh = (torch.from_numpy(x).reshape(-1, *ds.input_shape), torch.from_numpy(y))
    return dataclasses.replace(ds, splits={**ds.splits, "fresh": fresh})


def scored_splits(ds) -> tuple[str, ...]:
    return ("val", "test", "fresh") if "fresh" in ds.splits else ("val", "test")


def _standalone(name: str, config: dict, recipe: dict, train_samples: int | None, fresh: int | None) -> dict:
    """One standalone training (in a worker process, one torch thread): accuracy on each scored split."""
    torch.set_num_threads(1)
    space = load_space(name)
    ds = subsample_train(add_fresh(load_dataset(space.dataset), fresh), train_samples)
    model = train_standalone(space, space.parse_config(config), TrainConfig(**recipe), ds)
    return {"seed": recipe["seed"], **{s: standalone_accuracy(model, ds, s) for s in scored_splits(ds)}}


def standalone_runs(
    name: str,
    cfgs: list,
    recipe: TrainConfig,
    seeds: int,
    workers: int,
    train_samples: int | None,
    fresh: int | None,
) -> dict[str, list[dict]]:
    """Train every config ``seeds`` times (recipe seed, +1, ...) on ``workers`` single-threaded
    processes, longest first: small networks use two processes better than two threads."""
    net = create_supernet(load_space(name))
    jobs = sorted(((c, recipe.seed + i) for c in cfgs for i in range(seeds)), key=lambda j: -net.macs(j[0]))
    out: dict[str, list[dict]] = {c.key(): [] for c in cfgs}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(
                _standalone,
                name,
                c.model_dump(),
                recipe.model_copy(update={"seed": seed}).model_dump(),
                train_samples,
                fresh,
            ): c
            for c, seed in jobs
        }
        for f in tqdm(as_completed(futures), total=len(futures), desc="standalone trainings", unit="net"):
            out[futures[f].key()].append(f.result())
    return out


SUPERNET_ONLY = {"n_random", "sampling", "importance", "warmup_epochs", "seed"}
"""Recipe fields that standalone training does not read (seed: the reused runs keep their own)."""


def reused_runs(path: Path, name: str, cfgs: list, recipe, seeds: int, sizes: dict) -> dict[str, list[dict]]:
    """Standalone runs from an earlier JSON of this script, for the same subnets, recipe and splits:
    supernet variants are then compared against one fixed reference (and 5 minutes sooner)."""
    old = json.loads(path.read_text())["spaces"][name]
    same = {k: v for k, v in recipe.model_dump().items() if k not in SUPERNET_ONLY}
    was = {k: v for k, v in old["recipe"].items() if k not in SUPERNET_ONLY}
    problems = []
    if same != was:
        problems.append(f"recipe {was} != {same}")
    if old["split_sizes"] != sizes:
        problems.append(f"splits {old['split_sizes']} != {sizes}")
    if [p["key"] for p in old["pairs"]] != [c.key() for c in cfgs]:
        problems.append("other subnets")
    if old["standalone_seeds"] < seeds:
        problems.append(f"{old['standalone_seeds']} standalone seeds < --seeds {seeds}")
    if problems:
        raise SystemExit(f"--reuse-standalone {path}: cannot reuse its runs ({'; '.join(problems)})")
    print(f"standalone runs reused from {path}")
    return {p["key"]: p["standalone_runs"][:seeds] for p in old["pairs"]}


def run_space(
    name: str,
    k: int,
    overrides: dict,
    split: str,
    seeds: int,
    how: str,
    workers: int,
    train_samples: int | None,
    fresh: int | None = None,
    reuse: Path | None = None,
) -> dict:
    space = load_space(name)
    recipe = default_recipe(space).model_copy(update=overrides)
    recipe = type(recipe).model_validate(recipe.model_dump())
    ds = subsample_train(add_fresh(load_dataset(space.dataset), fresh), train_samples)
    if split == "fresh" and "fresh" not in ds.splits:
        raise SystemExit("--split fresh needs --fresh-samples N")
    sizes = ds.sizes()
    print(f"\n== {space.name}: recipe {recipe.model_dump()}; splits {sizes}")
    res = train_supernet(space, recipe, dataset=ds)
    ev = Evaluator(res.supernet, ds)
    net = res.supernet
    summary = {
        "recipe": recipe.model_dump(),
        "train_seconds": round(res.seconds, 1),
        "largest": {"val": ev.accuracy(space.largest(), "val"), "test": ev.accuracy(space.largest(), "test")},
        "smallest": {"val": ev.accuracy(space.smallest(), "val"), "test": ev.accuracy(space.smallest(), "test")},
    }
    pairs, rows = [], []
    t0 = time.perf_counter()
    cfgs = spread(space, k, how=how)
    if reuse is not None:
        runs_of = reused_runs(reuse, name, cfgs, recipe, seeds, sizes)
    else:
        runs_of = standalone_runs(name, cfgs, recipe, seeds, workers, train_samples, fresh)
    for cfg in cfgs:
        inh = {s: ev.accuracy(cfg, s) for s in scored_splits(ds)}
        runs = runs_of[cfg.key()]
        alone = {s: float(np.mean([r[s] for r in runs])) for s in scored_splits(ds)}
        inh["heldout"], alone["heldout"] = heldout(inh, sizes), heldout(alone, sizes)
        pairs.append(
            {
                "key": cfg.key(),
                "macs": net.macs(cfg),
                "params": net.num_params(cfg),
                "inherited": inh[split],
                "standalone": alone[split],
                "inherited_by_split": inh,
                "standalone_by_split": alone,
                "standalone_runs": runs,
                "config": cfg.model_dump(),
            }
        )
        rows.append(
            [
                cfg.key(),
                f"{net.macs(cfg):,}",
                f"{inh[split]:.2%}",
                f"{alone[split]:.2%}",
                f"{(alone[split] - inh[split]) * 100:+.2f}",
            ]
        )
        print(rows[-1], flush=True)
    taus = {}
    for s in (*scored_splits(ds), "heldout"):
        a = np.array([p["inherited_by_split"][s] for p in pairs])
        b = np.array([p["standalone_by_split"][s] for p in pairs])
        taus[s] = float(kendalltau(a, b).statistic)
    inh = np.array([p["inherited"] for p in pairs])
    alone = np.array([p["standalone"] for p in pairs])
    tau = taus[split]
    summary.update(
        {
            "split": split,
            "split_sizes": sizes,
            "standalone_seeds": seeds,
            "standalone_reused_from": str(reuse) if reuse else None,
            "pick": how,
            "pairs": pairs,
            "kendall_tau": tau,
            "kendall_tau_by_split": taus,
            "mean_gap_pts": float((alone - inh).mean() * 100),
            "standalone_seconds": round(time.perf_counter() - t0, 1),
        }
    )
    print(table(rows, ["subnet", "MACs", f"inherited ({split})", f"standalone ({split})", "gap pts"]))
    print(
        f"{space.name}: largest val {summary['largest']['val']:.2%} test {summary['largest']['test']:.2%}; "
        f"smallest val {summary['smallest']['val']:.2%} test {summary['smallest']['test']:.2%}; "
        f"Kendall tau {tau:.3f} ({split}; " + ", ".join(f"{s} {t:.3f}" for s, t in taus.items()) + "); "
        f"mean gap {summary['mean_gap_pts']:+.2f} pts; "
        f"supernet {res.seconds:.0f} s, standalone {summary['standalone_seconds']:.0f} s"
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", nargs="+", default=["resnet_mnist", "mlp_digits"])
    ap.add_argument("--k", type=int, default=8, help="subnets compared per space (default %(default)s)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (all spaces)")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override recipe fields (all spaces), e.g. n_random=3",
    )
    ap.add_argument(
        "--split",
        default="heldout",
        choices=["val", "test", "heldout", "fresh"],
        help="split of the pairs and the headline tau (heldout = val + test; fresh: --fresh-samples); all are written",
    )
    ap.add_argument(
        "--seeds", type=int, default=1, help="standalone trainings per subnet, averaged (default %(default)s)"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="processes for the standalone trainings (default %(default)s)"
    )
    ap.add_argument("--pick", default="log-macs", choices=["log-macs", "quantile"], help="how the k subnets are spread")
    ap.add_argument(
        "--train-samples",
        type=int,
        help="train supernet and standalone nets on a stratified subset of this many training samples (default: all)",
    )
    ap.add_argument(
        "--fresh-samples",
        type=int,
        help="mnist1d only: also score every pair on this many newly generated sequences (split 'fresh')",
    )
    ap.add_argument(
        "--reuse-standalone",
        type=Path,
        metavar="JSON",
        help="take the standalone runs from an earlier results file of the same subnets, recipe and splits",
    )
    ap.add_argument(
        "--out", default="supernet_quality", help="results file name under benchmarks/results (default %(default)s)"
    )
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.epochs:
        overrides["epochs"] = args.epochs
    t0 = time.perf_counter()
    out = {
        name: run_space(
            name,
            args.k,
            overrides,
            args.split,
            args.seeds,
            args.pick,
            args.workers,
            args.train_samples,
            args.fresh_samples,
            args.reuse_standalone,
        )
        for name in args.spaces
    }
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f} s")
    write(
        args.out,
        {
            "command": "benchmarks/supernet_quality.py " + " ".join(sys.argv[1:]),
            "total_seconds": round(total, 1),
            "spaces": out,
        },
    )


if __name__ == "__main__":
    main()
