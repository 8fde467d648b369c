"""int8 in the search, measured on this machine (onnxruntime CPU, 1 intra-op thread, batch 1).

Stages (each cached in --data-dir so a rerun skips what is done; results in benchmarks/results/int8.json):

1. ``tables``: the fp32 and int8 latency tables of resnet_mnist (n_fit fitted, n_validate held-out
   subnets each, exports shared); the int8 table's fidelity on its held-out subnets.
2. ``units``: int8/fp32 latency per unit (the same keys in both tables) over the widths: where int8
   is slower.
3. ``calibration``: fp32 vs int8 accuracy (val split, onnxruntime) of a few trained subnets per
   calibration method (MinMax, Entropy, Percentile).
4. ``front``: on resnet_mnist (a supernet trained with a short recipe), the fp32-only front vs the joint
   fp32+int8 front (``nasprune.search.precision.expand_front``, the job's own step) of the same
   architectures (random + uniform-width), at 25/50/75% of the largest subnet's fp32 latency:
   hypervolume, best accuracy within budget, int8 accuracy drop per int8 candidate, time taken.
5. ``qat``: does quantization-aware fine-tuning (``nasprune.finetune.Int8Simulation``) recover what
   int8 loses? For ``--qat-archs`` architectures (uniform widths + random) of the same short supernet:
   fp32 and int8 accuracy (onnxruntime, quantized as the search quantizes) on inherited weights, after
   a plain fine-tune (``--ft-epochs``, distilled, then quantized) and after a quantization-aware one
   (same budget and seed). Per variant: the int8 drop (its own fp32 minus its int8 accuracy) and the
   int8 test accuracy, with paired differences QAT - plain over the architectures (mean and SE).

``--space`` runs the stages on another space (results in ``int8_<space>.json``; default resnet_mnist
writes ``int8.json``).

    .venv/bin/python benchmarks/int8.py [--stages tables units calibration front qat] [--n-validate 50]
        [--epochs 3] [--archs 60] [--space cnn1d_mnist1d] [--qat-archs 12] [--ft-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import RESULTS, write

from nasprune.latency import LatencyTable, build_table, table_path
from nasprune.registry import load_space
from nasprune.search.pareto import pareto_records

SPACE = "resnet_mnist"


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stage_tables(root: Path, n_fit: int, n_validate: int) -> dict:
    space = load_space(SPACE)
    out = {}
    for precision in ("fp32", "int8"):
        path = table_path(SPACE, "local-cpu", root, precision)
        if path.is_file():
            table = LatencyTable.load(path)
        else:
            t0 = time.perf_counter()
            table = build_table(space, n_fit=n_fit, n_validate=n_validate, folder=root / "exports", progress=False,
                                precision=precision)  # fmt: skip
            table.save(path)
            print(f"{precision} table built in {time.perf_counter() - t0:.0f} s")
        e = table.error
        out[precision] = {
            "n_validate": e.n, "median_ape": e.median_ape, "p90_ape": e.p90_ape, "max_ape": e.max_ape,
            "within_10": e.within_10, "spearman": e.spearman, "build_seconds": table.build_seconds,
            "min_ms": table.min_latency(), "max_ms": table.max_latency(), "keys": len(table.entries),
            "correction": table.correction.model_dump(),
        }  # fmt: skip
        print(f"{precision}: {e.summary()}; range {table.min_latency():.4f}-{table.max_latency():.4f} ms")
    return out


def stage_units(root: Path) -> dict:
    f = LatencyTable.load(table_path(SPACE, "local-cpu", root))
    q = LatencyTable.load(table_path(SPACE, "local-cpu", root, "int8"))
    rows = []
    for e in f.entries:
        if e.op in q and e.median_ms > 0.0005:
            k = e.op
            rows.append({
                "kind": k.kind, "op": k.op, "c_in": k.c_in, "c_out": k.c_out, "kernel": k.kernel, "stride": k.stride,
                "h_in": k.h_in, "residual": k.residual, "fp32_us": round(e.median_ms * 1e3, 2),
                "int8_us": round(q.op_ms(k) * 1e3, 2), "ratio": round(q.op_ms(k) / e.median_ms, 3),
            })  # fmt: skip
    by_kind: dict[str, dict] = {}
    for r in rows:
        d = by_kind.setdefault(f"{r['kind']}{'/' + r['op'] if r['op'] else ''}", {"n": 0, "slower": 0, "ratios": []})
        d["n"] += 1
        d["slower"] += r["ratio"] > 1
        d["ratios"].append(r["ratio"])
    summary = {k: {"n": v["n"], "int8_slower": v["slower"], "median_ratio": float(np.median(v["ratios"]))}
               for k, v in by_kind.items()}  # fmt: skip
    convs = [r for r in rows if r["kind"] == "conv"]
    by_width: dict[int, list[float]] = {}
    for r in convs:
        by_width.setdefault(r["c_out"], []).append(r["ratio"])
    widths = {w: {"n": len(v), "median_ratio": float(np.median(v)), "int8_slower": int(sum(x > 1 for x in v))}
              for w, v in sorted(by_width.items())}  # fmt: skip
    print("int8/fp32 per unit kind:", json.dumps(summary, indent=1))
    print("conv units by output width (int8/fp32 median ratio):",
          {w: round(v["median_ratio"], 2) for w, v in widths.items()})  # fmt: skip
    return {"by_kind": summary, "conv_by_width": widths, "units": rows}


def _trained(space, root: Path, epochs: int):
    from nasprune.train import TrainConfig, load_checkpoint, save_checkpoint, supernet_path, train_supernet

    path = supernet_path(space, root)
    if path.is_file():
        return load_checkpoint(path), None
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, warmup_epochs=1, batch_size=128 if len(space.input_shape) > 1 else 64,
                      max_shift=2 if len(space.input_shape) == 3 else 0)  # fmt: skip
    res = train_supernet(space, cfg, progress=False)
    save_checkpoint(res.supernet, path)
    return res.supernet, time.perf_counter() - t0


def stage_calibration(root: Path, epochs: int) -> dict:
    from nasprune.data import load_dataset
    from nasprune.evaluate import Evaluator
    from nasprune.export import export_subnet
    from nasprune.quantize import compare_calibrations

    out = {}
    for name, ep in (("mlp_digits", 8), (SPACE, epochs)):
        space = load_space(name)
        supernet, _ = _trained(space, root, ep)
        ds = load_dataset(space.dataset)
        ev = Evaluator(supernet, ds)
        rows = []
        for label, cfg in (("largest", space.largest()), ("uniform 0.5", space.uniform(0.5)),
                           ("smallest", space.smallest())):  # fmt: skip
            path = root / "calib" / f"{name}-{cfg.key()}.onnx"
            export_subnet(supernet, cfg, path, model=ev.subnet(cfg))
            t0 = time.perf_counter()
            acc = compare_calibrations(path, ds)
            rows.append(
                {
                    "subnet": label,
                    **acc,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "n_val": len(ds.tensors("val")[1]),
                }
            )
            print(name, label, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})
        out[name] = rows
    return out


def stage_front(root: Path, epochs: int, n_archs: int, seed: int = 0) -> dict:
    from nasprune.data import load_dataset
    from nasprune.evaluate import Evaluator
    from nasprune.search import precision
    from nasprune.search.job import SearchJob
    from nasprune.search.pareto import hypervolume
    from nasprune.search.study import TrialRecord

    space = load_space(SPACE)
    supernet, train_s = _trained(space, root, epochs)
    ds = load_dataset(space.dataset)
    ev = Evaluator(supernet, ds)
    f = LatencyTable.load(table_path(SPACE, "local-cpu", root))
    q = LatencyTable.load(table_path(SPACE, "local-cpu", root, "int8"))
    rng = np.random.default_rng(seed)
    cfgs = {c.key(): c for c in [space.uniform(w) for w in (0.25, 0.5, 0.75, 1.0)]}
    while len(cfgs) < n_archs:
        c = space.sample(rng)
        cfgs.setdefault(c.key(), c)
    t0 = time.perf_counter()
    trials = [
        TrialRecord(number=i, subnet_key=c.key(), config=c.model_dump(), accuracy=ev.accuracy(c, "val"),
                    latency_ms=f.predict(c), params=supernet.num_params(c), macs=supernet.macs(c), feasible=True)
        for i, c in enumerate(cfgs.values())
    ]  # fmt: skip
    fp32_s = time.perf_counter() - t0
    largest = f.max_latency()
    out = {"n_archs": len(trials), "fp32_scoring_seconds": round(fp32_s, 1), "train_seconds": train_s,
           "train_epochs": epochs, "largest_fp32_ms": largest, "budgets": {}}  # fmt: skip
    scorer = precision.Int8Scorer(supernet, ev, root / "front_int8")
    for frac in (0.25, 0.5, 0.75):
        budget = frac * largest
        feas = [t.model_copy(update={"feasible": t.latency_ms <= budget}) for t in trials]
        fp32_front = pareto_records([t for t in feas if t.feasible])
        job = SearchJob(space=SPACE, latency_budget_ms=budget, precisions=["fp32", "int8"])
        before = scorer.quantized
        t1 = time.perf_counter()
        joint = precision.expand_front(fp32_front, feas, job, q, scorer)
        int8_s = time.perf_counter() - t1
        drops = []
        for r in joint:
            if r.precision == "int8":
                cfg = space.parse_config(r.config)
                drops.append(round(ev.accuracy(cfg, "val") - r.accuracy, 4))
        pts = lambda rs: [(r.accuracy, r.latency_ms) for r in rs]  # noqa: E731
        row = {
            "budget_ms": budget,
            "fp32": {"hypervolume": hypervolume(pts(fp32_front), budget), "best_accuracy": max(
                (r.accuracy for r in fp32_front), default=None), "size": len(fp32_front)},
            "joint": {"hypervolume": hypervolume(pts(joint), budget), "best_accuracy": max(
                (r.accuracy for r in joint), default=None), "size": len(joint),
                "int8_on_front": sum(r.precision == "int8" for r in joint)},
            "quantized_now": scorer.quantized - before, "int8_step_seconds": round(int8_s, 1),
            "int8_accuracy_drops": drops,
            "front": [{"precision": r.precision, "accuracy": r.accuracy, "latency_ms": r.latency_ms} for r in joint],
        }  # fmt: skip
        out["budgets"][f"{int(frac * 100)}%"] = row
        print(f"{frac:.0%} ({budget:.4f} ms): fp32 HV {row['fp32']['hypervolume']:.5f} best "
              f"{row['fp32']['best_accuracy']}; joint HV {row['joint']['hypervolume']:.5f} best "
              f"{row['joint']['best_accuracy']} ({row['joint']['int8_on_front']} int8 of {len(joint)}); "
              f"quantized {row['quantized_now']} in {int8_s:.0f} s; drops {drops}")  # fmt: skip
    return out


def stage_qat(root: Path, epochs: int, n_archs: int, ft_epochs: float, seed: int = 0) -> dict:
    from nasprune.data import load_dataset
    from nasprune.evaluate import Evaluator, accuracy_of
    from nasprune.export import export_model
    from nasprune.finetune import finetune_subnet
    from nasprune.quantize import calibration_inputs, quantize_model, split_accuracy
    from nasprune.search import precision
    from nasprune.train import default_recipe

    space = load_space(SPACE)
    supernet, _ = _trained(space, root, epochs)
    ds = load_dataset(space.dataset)
    ev = Evaluator(supernet, ds)
    scorer = precision.Int8Scorer(supernet, ev, root / "qat_int8")
    recipe = default_recipe(space)
    rng = np.random.default_rng(seed)
    cfgs = {c.key(): c for c in [space.uniform(w) for w in (0.25, 0.5, 0.75, 1.0)]}
    while len(cfgs) < n_archs:
        c = space.sample(rng)
        cfgs.setdefault(c.key(), c)
    calib = calibration_inputs(ds)
    (root / "qat").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cfg in enumerate(cfgs.values()):
        row = {"config": cfg.model_dump(), "inherited": {
            "fp32_val": ev.accuracy(cfg, "val"), "fp32_test": ev.accuracy(cfg, "test"),
            "int8_val": scorer.accuracy(cfg, "val"), "int8_test": scorer.accuracy(cfg, "test")}}  # fmt: skip
        for variant, fq in (("plain", False), ("qat", True)):
            t0 = time.perf_counter()
            res = finetune_subnet(supernet, cfg, ds, epochs=ft_epochs, batch_size=recipe.batch_size,
                                  max_shift=recipe.max_shift, seed=seed, fake_quant=fq)  # fmt: skip
            secs = time.perf_counter() - t0
            flt, q8 = root / "qat" / f"{cfg.key()}.{variant}.onnx", root / "qat" / f"{cfg.key()}.{variant}.int8.onnx"
            export_model(res.model, tuple(space.input_shape), flt)
            quantize_model(flt, q8, calib)
            xv, yv = ds.tensors("val")
            xt, yt = ds.tensors("test")
            row[variant] = {
                "fp32_val": accuracy_of(res.model, xv, yv), "fp32_test": accuracy_of(res.model, xt, yt),
                "int8_val": split_accuracy(q8, ds, "val"), "int8_test": split_accuracy(q8, ds, "test"),
                "seconds": round(secs, 1),
            }  # fmt: skip
        for v in ("inherited", "plain", "qat"):
            r = row[v]
            r["drop_val"], r["drop_test"] = r["fp32_val"] - r["int8_val"], r["fp32_test"] - r["int8_test"]
        rows.append(row)
        print(f"[{i + 1}/{len(cfgs)}] int8 test: inherited {row['inherited']['int8_test']:.2%} "
              f"(drop {row['inherited']['drop_test']:+.2%}), plain ft {row['plain']['int8_test']:.2%} "
              f"(drop {row['plain']['drop_test']:+.2%}), QAT {row['qat']['int8_test']:.2%} "
              f"(drop {row['qat']['drop_test']:+.2%})")  # fmt: skip

    def paired(key: str, subset: list) -> dict:
        d = [r["qat"][key] - r["plain"][key] for r in subset]
        if not d:
            return {"n": 0}
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        return {"n": len(d), "mean": float(np.mean(d)), "se": se}

    lossy = [r for r in rows if r["inherited"]["drop_val"] > 0.005]
    summary = {
        "mean": {v: {k: float(np.mean([r[v][k] for r in rows])) for k in ("int8_test", "drop_test", "drop_val")}
                 for v in ("inherited", "plain", "qat")},
        "qat_minus_plain_int8_test": paired("int8_test", rows),
        "qat_minus_plain_int8_val": paired("int8_val", rows),
        "qat_minus_plain_drop_test": paired("drop_test", rows),
        "lossy_n": len(lossy),
        "lossy_qat_minus_plain_int8_test": paired("int8_test", lossy),
        "lossy_qat_minus_plain_int8_val": paired("int8_val", lossy),
    }  # fmt: skip
    print(json.dumps(summary, indent=1))
    return {"space": SPACE, "epochs": epochs, "ft_epochs": ft_epochs, "rows": rows, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=["tables", "units", "calibration", "front"])
    ap.add_argument("--data-dir", type=Path, default=Path(".nasprune/bench-int8"))
    ap.add_argument("--n-fit", type=int, default=20)
    ap.add_argument("--n-validate", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3, help="resnet_mnist supernet epochs (a short recipe)")
    ap.add_argument("--archs", type=int, default=60, help="architectures scored for the front comparison")
    ap.add_argument("--space", default="resnet_mnist", help="the space the stages run on")
    ap.add_argument("--qat-archs", type=int, default=12, help="architectures of the qat stage")
    ap.add_argument("--ft-epochs", type=float, default=2, help="fine-tuning epochs of the qat stage (the job default)")
    args = ap.parse_args(argv)
    global SPACE
    SPACE = args.space
    name = "int8" if SPACE == "resnet_mnist" else f"int8_{SPACE}"
    if SPACE != "resnet_mnist" and args.data_dir == Path(".nasprune/bench-int8"):
        args.data_dir = Path(f".nasprune/bench-int8-{SPACE}")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    prev = RESULTS / f"{name}.json"
    payload = json.loads(prev.read_text()) if prev.is_file() else {}
    payload.pop("machine", None)
    payload.setdefault("load_avg", {})
    for stage in args.stages:
        payload["load_avg"][f"{stage}_before"] = _load_avg()
        t0 = time.perf_counter()
        if stage == "tables":
            payload["tables"] = stage_tables(args.data_dir, args.n_fit, args.n_validate)
        elif stage == "units":
            payload["units"] = stage_units(args.data_dir)
        elif stage == "calibration":
            payload["calibration"] = stage_calibration(args.data_dir, args.epochs)
        elif stage == "front":
            payload["front"] = stage_front(args.data_dir, args.epochs, args.archs)
        elif stage == "qat":
            payload["qat"] = stage_qat(args.data_dir, args.epochs, args.qat_archs, args.ft_epochs)
        else:
            ap.error(f"unknown stage {stage!r}; allowed: tables units calibration front qat")
        payload.setdefault("stage_seconds", {})[stage] = round(time.perf_counter() - t0, 1)
        payload["load_avg"][f"{stage}_after"] = _load_avg()
        write(name, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
