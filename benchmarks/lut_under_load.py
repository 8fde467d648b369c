"""Latency tables built on a quiet and on a busy machine: how far each predicts, and which statistic holds.

    .venv/bin/python benchmarks/lut_under_load.py [--spaces resnet_mnist fashion_resnet20]
        [--conditions quiet busy quiet] [--busy 2] [--n-fit 20] [--n-validate 50] [--raw DIR]
    .venv/bin/python benchmarks/lut_under_load.py --analyze DIR

Each build is ``nasprune.latency.build_table`` with its default settings, every timed call kept
(``--raw DIR``, one ``.npz`` per build). "busy" starts ``--busy`` processes that spin
(``python3 -c "while True: pass"``) before the build and stops them by their process ids after it.
The fit and held-out subnets are the same in every build (same seed), so a table built under one
condition can be scored on the held-out subnets measured under another. The error printed while
recording is the one under the median of all calls (the statistic before 2026-12-07).

``--analyze DIR`` replays the recorded calls through the table arithmetic with each statistic of
``STATISTICS`` and prints, per space, statistic and build: the error on the build's own held-out
subnets, and on the held-out subnets of the quiet builds (what a user of the table sees on a quiet
machine). Writes ``benchmarks/results/lut_under_load.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _util import spinners

from nasprune.latency import profile
from nasprune.latency.table import compare
from nasprune.latency.timing import Timing, interleave_calls

HERE = Path(__file__).resolve().parent
DERIVED = {"fashion_resnet20": ("fashion_models:resnet20", (1, 28, 28))}


def _round_medians(c: np.ndarray) -> np.ndarray:
    return np.median(c, axis=1)


STATISTICS = {
    "pooled median": lambda c: float(np.median(c)),
    "median of round medians": lambda c: float(np.median(_round_medians(c))),
    "25th pct of round medians": lambda c: float(np.percentile(_round_medians(c), 25)),
    "min of round medians": lambda c: float(np.min(_round_medians(c))),
    "10th pct of calls": lambda c: float(np.percentile(c, 10)),
}


def load_space_named(name: str):
    if name in DERIVED:
        from nasprune.graph import build_model
        from nasprune.graph.api import derive_space

        ref, shape = DERIVED[name]
        model = build_model(ref, {"num_classes": 10}).eval()
        return derive_space(copy.deepcopy(model), shape, ref, name=name, dataset="none",
                            model_kwargs={"num_classes": 10})  # fmt: skip
    from nasprune.registry import load_space

    return load_space(name)


def _timings(calls: list[np.ndarray], stat) -> list[Timing]:
    return [Timing(stat(c), float(np.percentile(c, 90)), int(c.size)) for c in calls]


def build(space, args, stat=None, replay: list | None = None, folder: Path | None = None):
    """build_table with every timed call recorded (or, with ``replay``, the recorded calls re-used)."""
    recorded: list[list[np.ndarray]] = []
    original = profile._time_all
    stat = stat or STATISTICS["pooled median"]

    def time_all(models, device, settings, rounds, burst, seed, progress, desc, flush_bytes=0):
        if replay is not None:
            calls = replay[len(recorded)]
        else:
            sessions = [profile.make_session(m, device.threads, device.provider) for m in models]
            feeds = [profile.feed_for(s, device.batch_size) for s in sessions]
            calls = interleave_calls(sessions, feeds, rounds, burst, settings.settle, settings.warmup, seed,
                                     flush_bytes=flush_bytes)  # fmt: skip
        recorded.append(calls)
        return _timings(calls, stat)

    profile._time_all = time_all
    try:
        settings = profile.ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=10) if args.quick else None
        table = profile.build_table(space, n_fit=args.n_fit, n_validate=args.n_validate, folder=folder,
                                    settings=settings)  # fmt: skip
    finally:
        profile._time_all = original
    return table, recorded


def record(args) -> None:
    args.raw.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name in args.spaces:
        space = load_space_named(name)
        folder = args.raw / f"{name}-onnx"
        for i, cond in enumerate(args.conditions):
            n = args.busy if cond == "busy" else 0
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            with spinners(n) as pids:
                table, calls = build(space, args, folder=folder)
            seconds = time.perf_counter() - t0
            meta = {"space": name, "condition": cond, "spinners": n, "pids": pids, "load_avg_before": load0,
                    "load_avg_after": os.getloadavg(), "seconds": seconds, "n_fit": args.n_fit,
                    "n_validate": args.n_validate, "quick": args.quick,
                    "error": table.error.summary() if table.error else None,
                    "build_load": table.build_load.model_dump() if table.build_load else None}  # fmt: skip
            arrays = {f"p{j}_{k}": c for j, phase in enumerate(calls) for k, c in enumerate(phase)}
            np.savez_compressed(args.raw / f"{name}-{i}-{cond}.npz", **arrays)
            (args.raw / f"{name}-{i}-{cond}.json").write_text(json.dumps(meta, indent=1))
            print(f"{name} build {i} ({cond}, {n} spinners): {seconds:.0f} s, load {load0[0]:.2f} -> "
                  f"{meta['load_avg_after'][0]:.2f}, {table.build_load.describe()}; {meta['error']}",
                  flush=True)  # fmt: skip


def _load(path: Path) -> list[list[np.ndarray]]:
    z = np.load(path)
    phases: dict[int, dict[int, np.ndarray]] = {}
    for key in z.files:
        j, k = key[1:].split("_")
        phases.setdefault(int(j), {})[int(k)] = z[key]
    return [[ph[k] for k in sorted(ph)] for _, ph in sorted(phases.items())]


def analyze(args) -> None:
    builds: dict[str, list[tuple[str, list]]] = {}
    metas = {}
    for meta_path in sorted(args.analyze.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        builds.setdefault(meta["space"], []).append((meta_path.stem, _load(meta_path.with_suffix(".npz"))))
        metas[meta_path.stem] = meta
    out: dict = {}
    for name, runs in builds.items():
        space = load_space_named(name)
        first = metas[runs[0][0]]
        args.n_fit, args.n_validate, args.quick = first["n_fit"], first["n_validate"], first.get("quick", False)
        folder = args.analyze / f"{name}-onnx"
        for sname, stat in STATISTICS.items():
            tables = {}
            held_ms = {}
            for stem, calls in runs:
                table, _ = build(space, args, stat=stat, replay=calls, folder=folder)
                tables[stem] = table
                held = calls[1][args.n_fit :]
                held_ms[stem] = [stat(c) for c in held]
            held_cfgs = [s.config for s in next(iter(tables.values())).error.samples]
            quiet = [s for s in tables if metas[s]["condition"] == "quiet"]
            for stem, table in tables.items():
                own = table.error
                on_quiet = [
                    compare(table, held_cfgs, [Timing(m, m, 1) for m in held_ms[q]]) for q in quiet if q != stem
                ]
                row = {"condition": metas[stem]["condition"], "own": own.summary(), "own_median_ape": own.median_ape,
                       "own_within_10": own.within_10,
                       "on_quiet": [r.summary() for r in on_quiet],
                       "on_quiet_median_ape": [r.median_ape for r in on_quiet],
                       "on_quiet_within_10": [r.within_10 for r in on_quiet],
                       # this build's held-out times over the quiet builds' (1.0: the same level)
                       "level": [float(np.median(np.array(held_ms[stem]) / np.array(held_ms[q]))) for q in quiet
                                 if q != stem]}  # fmt: skip
                out.setdefault(name, {}).setdefault(sname, {})[stem] = row
                other = "; ".join(
                    f"{r.median_ape:.2f}% / {100 * r.within_10:.0f}% (level {lv:.3f})"
                    for r, lv in zip(on_quiet, row["level"], strict=True)
                )
                print(f"{name:18s} {sname:26s} {stem:28s} own {own.median_ape:5.2f}% / {100 * own.within_10:3.0f}%"
                      f"   on quiet builds' held-out: {other}")  # fmt: skip
    path = HERE / "results" / "lut_under_load.json"
    path.write_text(json.dumps({"builds": metas, "analysis": out}, indent=1))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=["resnet_mnist", "fashion_resnet20"])
    ap.add_argument("--conditions", nargs="+", default=["quiet", "busy", "quiet"], choices=["quiet", "busy"])
    ap.add_argument("--busy", type=int, default=2, help="spinning processes during a busy build")
    ap.add_argument("--n-fit", type=int, default=20)
    ap.add_argument("--n-validate", type=int, default=50)
    ap.add_argument("--raw", type=Path, default=Path("/tmp/lut_under_load"), help="where the timed calls go")
    ap.add_argument("--quick", action="store_true", help="few rounds (a smoke test of this script, no figures)")
    ap.add_argument("--analyze", type=Path, help="replay the builds recorded in this folder")
    args = ap.parse_args()
    analyze(args) if args.analyze else record(args)


if __name__ == "__main__":
    main()
