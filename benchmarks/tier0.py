"""Tier 0 (``nasprune prune``): a model under the budget in minutes, against Torch-Pruning without fine-tuning.

1. The user's trained model (``--target``, as in ``vs_torch_pruning.py``: trained here, or ``--weights``);
   its ONNX latency measured; its space (built-in, or derived from its graph) and this machine's table.
2. Importance: per channel ordering (Fisher, Taylor, filter L1) and per choice estimate, against the
   *measured* loss increase of each single choice (one group narrowed to one of its widths, or one
   sequence cut to one of its depths; validation split, with and without BatchNorm recalibration):
   the mean increase when each criterion decides which channels stay (lower: better order), and the
   Spearman correlation of each estimate (Fisher, Taylor, and the calibration-measured values tier 0
   uses by default) with the measured increase.
3. Per budget (fractions of the original's measured latency):
   - ``nasprune prune`` run as a user runs it (a subprocess, torch at 1 thread): wall time to a checked,
     measured ``model.onnx``; its validation and test accuracy, measured latency;
   - the ablation, at the predicted budget the command ended at, every model BatchNorm-recalibrated
     unless said: the width multiplier (uniform widths, L1 order), importance alone (uniform widths,
     Fisher order), + the knapsack on the table, + least squares (= tier 0); then tier 0 without
     any repair (what BatchNorm recalibration adds), uniform widths with least squares, the knapsack
     on Fisher estimates instead of measured values, and L1 order;
   - Torch-Pruning 1.6 (``vs_torch_pruning.tp_prune``: global pruning bisected to the same measured
     share of the original's latency; LAMP and group-magnitude) *without* fine-tuning, BatchNorm
     recalibrated on the same calibration split (and as pruned).
   Test accuracy with its binomial standard error; tier 0's model and Torch-Pruning's timed interleaved
   against the original (share of its latency).

    .venv/bin/python benchmarks/tier0.py [--target resnet_mnist|user|fashion_user] [--budgets 0.5 0.25]
        [--weights FILE.safetensors] [--data-dir DIR] [--train-samples N]

Writes benchmarks/results/tier0.json (resnet_mnist) or tier0_<target>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import vs_torch_pruning as vtp
from _util import write as save_results
from scipy.stats import spearmanr
from vs_torch_pruning import TARGETS, binomial_se, onnx_ms, original_model, share_of, tp_prune

from nasprune.data import load_dataset
from nasprune.evaluate import accuracy_of, recalibrate_bn
from nasprune.export import read_metadata
from nasprune.graph import GraphSupernet
from nasprune.graph.api import derive_space
from nasprune.graph.supernet import extract
from nasprune.latency.store import get_table
from nasprune.registry import load_space
from nasprune.search.tier0 import Tier0, uniform_under
from nasprune.search.tier0.importance import estimate, measure_choices, measured_loss
from nasprune.search.tier0.knapsack import values_of

HERE = Path(__file__).resolve().parent


def importance_quality(original, space, ds) -> dict:
    """Section 2: each criterion's channel order and each estimate against measured single-choice losses."""
    xc, yc = ds.tensors("calib")
    xv, yv = ds.tensors("val")
    largest = space.largest()
    items = [("w", g, w) for g, grp in space.groups.items() for w in grp.widths[:-1]]
    items += [("d", s, d) for s, seq in space.sequences.items() for d in seq.depths[:-1]]

    def cfg_of(item):
        kind, name, v = item
        if kind == "w":
            return space.config(largest.depths, {**largest.widths, name: v})
        return space.config({**largest.depths, name: v}, largest.widths)

    out: dict = {"items": len(items)}
    measured_fisher_order = None
    for kind in ("fisher", "taylor", "l1"):
        t0 = time.perf_counter()
        net = GraphSupernet(space, copy.deepcopy(original).eval())
        scores = estimate(net, xc, yc, kind)
        scores = scores.permuted(net.reorder_channels(scores.channels))
        seconds = time.perf_counter() - t0
        base = measured_loss(net, xv, yv)
        raw, recal = [], []
        for item in items:
            model = extract(net, cfg_of(item)).eval()
            raw.append(measured_loss(model, xv, yv) - base)
            recalibrate_bn(model, [xc])
            recal.append(measured_loss(model, xv, yv) - base)
        widths = [i for i, it in enumerate(items) if it[0] == "w"]
        row = {
            "seconds": seconds,
            "mean_increase_widths": sum(raw[i] for i in widths) / len(widths),
            "mean_increase_widths_bn": sum(recal[i] for i in widths) / len(widths),
        }
        if kind != "l1":
            values = values_of(space, scores)
            est = [values.groups[n][v] if k == "w" else values.sequences[n][v] for k, n, v in items]
            row["spearman_estimate_vs_measured"] = spearmanr(est, raw).statistic
            row["spearman_estimate_vs_measured_bn"] = spearmanr(est, recal).statistic
            row["spearman_estimate_vs_measured_bn_widths"] = spearmanr(
                [est[i] for i in widths], [recal[i] for i in widths]
            ).statistic
            row["estimate_vs_measured_bn"] = [[list(it), e, m] for it, e, m in zip(items, est, recal, strict=True)]
        if kind == "fisher":
            t0 = time.perf_counter()
            cal = measure_choices(net, xc, yc)
            row["calibration_values_s"] = time.perf_counter() - t0
            est = [cal.groups[n][v] if k == "w" else cal.sequences[n][v] for k, n, v in items]
            row["spearman_calibration_values_vs_measured_bn"] = spearmanr(est, recal).statistic
            measured_fisher_order = recal
        out[kind] = row
        print(f"importance {kind}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                 if isinstance(v, float)), flush=True)  # fmt: skip
    out["measured_bn_fisher_order"] = measured_fisher_order
    return out


def run_cli(space_ref: str, weights: Path, dataset: str, budget: float, root: Path, out: Path) -> dict:
    """``nasprune prune`` as a user runs it; its wall time, its output and the model's metadata."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-W", "ignore", "-m", "nasprune", "prune", "--space", space_ref, "--weights", str(weights),
           "--dataset", dataset, "--budget-ms", f"{budget:.6f}", "--data-dir", str(root), "-o", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    print(proc.stdout, end="", flush=True)
    if proc.returncode == 2 and "below the fastest subnet" in proc.stderr:  # the space cannot get there
        return {"unreachable": proc.stderr.strip().splitlines()[-1], "wall_s": wall, "command": " ".join(cmd)}
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"nasprune prune failed ({proc.returncode}): {proc.stderr[-2000:]}")
    meta = {}
    for k, v in read_metadata(out).items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "command": " ".join(cmd[3:]),
        "stdout": proc.stdout,
        "metadata": meta,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=sorted(TARGETS), default="resnet_mnist")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25],
                    help="fractions of the original's measured latency")  # fmt: skip
    ap.add_argument("--weights", type=Path, help="the trained model's safetensors (default: train it here)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of the original (default: the target's)")
    ap.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="train the original on a stratified subset of this many train images (a user dataset)",
    )
    ap.add_argument("--data-dir", type=Path, help="data dir for tables (default: a temporary one)")
    ap.add_argument("--skip-importance", action="store_true", help="skip section 2")
    ap.add_argument(
        "--importance-from",
        type=Path,
        metavar="JSON",
        help="with --skip-importance: keep section 2 of an earlier run on the same trained model",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref, dataset, shape, builtin, default_epochs = TARGETS[args.target]
    vtp.SHAPE = shape  # tp_prune and onnx_ms read the input shape from there
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    tmp = Path(tempfile.mkdtemp(prefix="tier0_"))
    root = args.data_dir or tmp / "data"
    ds = load_dataset(dataset)
    if args.train_samples:
        from nasprune.errors import DatasetNameTaken

        try:
            dataset, ds = vtp.as_user_dataset(ds, args.train_samples, root)
        except DatasetNameTaken:  # added by an earlier run on this data dir: the same subset
            dataset = f"{ds.name}_{args.train_samples}"
            ds = load_dataset(dataset, data_dir=root)
    xc, _ = ds.tensors("calib")
    xt, yt = ds.tensors("test")
    n_test = len(yt)
    out: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "n_test": n_test,
                 "load_avg_start": list(os.getloadavg())}  # fmt: skip

    # 1. the user's trained model, its latency, its space and this machine's table
    original, weights, t_orig = original_model(ref, ds, args.weights, args.epochs or default_epochs, args.seed,
                                               tmp / args.target)  # fmt: skip
    _, orig_ms = onnx_ms(original, tmp, "original")
    out["original"] = {"test_accuracy": accuracy_of(original, xt, yt), "ms": orig_ms, "train_s": t_orig}
    print(f"original: {out['original']['test_accuracy']:.2%} test, {orig_ms:.4f} ms", flush=True)
    if builtin:
        space = load_space(builtin)
        space_ref = builtin
    else:  # derived from the trained model's graph, saved without weights: one table for any weights
        space = derive_space(copy.deepcopy(original), shape, ref, name=args.target, dataset=dataset,
                             model_kwargs={"num_classes": 10})  # fmt: skip
        path = root / "spaces" / f"{args.target}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        space.save(path)
        space, space_ref = load_space(path), str(path)
    t0 = time.perf_counter()
    table = get_table(space, data_dir=root, progress=True)
    out["table_s"] = time.perf_counter() - t0
    out["table"] = {"min_ms": table.min_latency(), "max_ms": table.max_latency(),
                    "error": table.error.summary() if table.error else None}  # fmt: skip
    print(f"table: {table.min_latency():.4f}-{table.max_latency():.4f} ms ({out['table_s']:.0f} s)", flush=True)

    # 2. importance
    if not args.skip_importance:
        out["importance"] = importance_quality(original, space, ds)
    elif args.importance_from:
        earlier = json.loads(args.importance_from.read_text())
        out["importance"] = {**earlier["importance"], "from": str(args.importance_from),
                             "from_date": earlier["machine"]["date"]}  # fmt: skip

    # 3. per budget
    pruners = {
        "fisher": Tier0(original, space, table, ds, importance="fisher"),
        "fisher_estimate": Tier0(original, space, table, ds, importance="fisher", values="estimate"),
        "l1": Tier0(original, space, table, ds, importance="l1"),
    }
    rows = {}
    for frac in args.budgets:
        tag = f"{round(frac * 100)}%"
        budget = frac * orig_ms
        print(f"\n[{tag}] budget {budget:.4f} ms", flush=True)
        row: dict = {"budget_ms": budget}
        model_path = tmp / f"tier0_{tag.rstrip('%')}.onnx"
        cli = run_cli(space_ref, weights, dataset, budget, root, model_path)
        if "unreachable" in cli:  # below the space's fastest subnet: nothing to compare at this budget
            print(f"[{tag}] {cli['unreachable']}", flush=True)
            rows[tag] = {"budget_ms": budget, "unreachable": cli["unreachable"]}
            continue
        meta = cli["metadata"]
        row["cli"] = {k: cli[k] for k in ("wall_s", "returncode", "command")}
        row["cli"].update({k: meta.get(k) for k in ("accuracy", "test_accuracy", "predicted_latency_ms",
                                                    "measured_latency_ms", "verified", "unverified_reason",
                                                    "tier0_attempts", "tier0_timings", "load_avg")})  # fmt: skip
        row["cli"]["share_of_original"] = share_of(model_path, tmp / "original.onnx")
        acc = meta["test_accuracy"]
        row["cli"]["se"] = binomial_se(acc, n_test)
        print(
            f"[{tag}] nasprune prune: {acc:.2%} test (+-{row['cli']['se']:.2%}), "
            f"{row['cli']['share_of_original']:.0%} of the original's latency, {cli['wall_s']:.0f} s",
            flush=True,
        )
        target = meta["tier0_attempts"][-1]["target_ms"] if meta.get("tier0_attempts") else budget
        row["predicted_target_ms"] = target

        def score(model) -> dict:
            a = accuracy_of(model, xt, yt)
            return {"test_accuracy": a, "se": binomial_se(a, n_test)}

        ablation = {}
        uni = uniform_under(space, table, target)
        knap = pruners["fisher"].choose(target)
        variants = [  # cumulative: each step adds one thing to the one above; then alternatives
            ("width multiplier (uniform, L1 order, BN recal)", pruners["l1"], uni, "bn"),
            ("importance alone (uniform, Fisher order, BN recal)", pruners["fisher"], uni, "bn"),
            ("+ knapsack on the table", pruners["fisher"], knap.config, "bn"),
            ("+ least squares (= tier 0)", pruners["fisher"], knap.config, "ls"),
            ("tier 0 without BN recal (no repair)", pruners["fisher"], knap.config, "none"),
            ("uniform, Fisher order, BN + LS", pruners["fisher"], uni, "ls"),
            ("knapsack on Fisher estimates, BN + LS", pruners["fisher_estimate"], None, "ls"),
            ("knapsack, L1 order, BN + LS", pruners["l1"], None, "ls"),
        ]
        for name, pruner, cfg, repair in variants:
            if cfg is None:
                cfg = pruner.choose(target).config
            t0 = time.perf_counter()
            model, _ = pruner.build(cfg, repair)
            ablation[name] = {**score(model), "predicted_ms": table.predict(cfg), "config": cfg.model_dump(),
                              "build_s": time.perf_counter() - t0}  # fmt: skip
            print(
                f"[{tag}] {name}: {ablation[name]['test_accuracy']:.2%} (+-{ablation[name]['se']:.2%}), "
                f"predicted {ablation[name]['predicted_ms']:.4f} ms",
                flush=True,
            )
        row["ablation"] = ablation
        for imp in ("lamp", "group_magnitude"):
            t0 = time.perf_counter()
            (ratio, pruned, probe_share), _tries = tp_prune(original, imp, frac, tmp)
            prune_s = time.perf_counter() - t0
            as_pruned = score(pruned)
            recalibrate_bn(pruned, [xc])
            recal = score(pruned)
            path, _ = onnx_ms(pruned, tmp, f"tp_{imp}_{tag.rstrip('%')}", runs=1)
            row[f"tp_{imp}"] = {
                "as_pruned": as_pruned, "bn_recal": recal, "ratio": ratio, "probe_share": probe_share,
                "share_of_original": share_of(path, tmp / "original.onnx"), "prune_s": prune_s,
            }  # fmt: skip
            print(
                f"[{tag}] torch-pruning {imp}: {as_pruned['test_accuracy']:.2%} as pruned, "
                f"{recal['test_accuracy']:.2%} (+-{recal['se']:.2%}) BN recalibrated, "
                f"{row[f'tp_{imp}']['share_of_original']:.0%} of the original",
                flush=True,
            )
        rows[tag] = row
    out["budgets"] = rows
    out["load_avg_end"] = list(os.getloadavg())
    save_results("tier0" if args.target == "resnet_mnist" else f"tier0_{args.target}", out)


if __name__ == "__main__":
    main()
