"""Why latency tables miss on torchvision models: units timed with warm weights vs cold ones.

    .venv/bin/python benchmarks/unit_cache.py [--model resnet18] [--subnets 6] [--flush-mb 16]

A latency table times every unit alone, back to back, so its weights stay in the CPU caches; inside
a network whose weights outgrow the caches, every unit reads its weights from further away. For a
few random subnets of the model's derived space (``--max-choices 2``, as in graph_lut_fidelity.py)
this times every unit's graph twice in interleaved rounds, *hot* (calls back to back, as the table
does) and *cold* (``--flush-mb`` of memory written before each call), each minus its producer and
consumer timed the same way (``profile_ops`` with ``ProfileSettings.flush_kb``), and the subnet
itself end to end. It prints, per subnet, the summed
hot and cold unit times next to the measured latency, and writes benchmarks/results/unit_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.graph_models import MODELS
from nasprune.graph import analyze_model, build_model, space_from_analysis
from nasprune.latency.device import DeviceProfile
from nasprune.latency.ops import ops_for
from nasprune.latency.profile import ProfileSettings, deployable_supernet, export_all, measure_models, profile_ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    ap.add_argument("--subnets", type=int, default=6)
    ap.add_argument("--flush-mb", type=float, default=16.0, help="memory written before each cold call")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--burst", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ref, shape = MODELS[args.model]
    model = build_model(ref, {"num_classes": 10}).eval()
    space = space_from_analysis(analyze_model(model, torch.zeros(1, *shape)), f"cache_{args.model}", ref, 10,
                         model_kwargs={"num_classes": 10}, max_choices=2)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    cfgs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(args.subnets - 2)]
    keys = sorted({k for c in cfgs for k in ops_for(space, c)})
    device = DeviceProfile.local()
    print(f"{args.model}: {len(keys)} units in {len(cfgs)} subnets, timed hot and cold")
    own = {}
    for mode, kb in (("hot", 0), ("cold", round(args.flush_mb * 1024))):
        # the table's own op profiling: each unit minus its producer and consumer, interleaved rounds
        settings = ProfileSettings(op_rounds=args.rounds, op_burst=args.burst, settle=1, warmup=5, flush_kb=kb)
        entries, _ = profile_ops(keys, device, settings, seed=args.seed)
        own[mode] = {k: t.median_ms for k, t in entries.items()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(deployable_supernet(space), cfgs, Path(tmp))
        e2e = ProfileSettings(e2e_rounds=args.rounds * 2, e2e_burst=args.burst * 2, settle=1, warmup=5)
        measured = [t.median_ms for t in measure_models(paths, device, e2e, seed=args.seed + 1)]
    rows = []
    for c, m in zip(cfgs, measured, strict=True):
        ops = ops_for(space, c)
        hot = sum(max(0.0, own["hot"][k]) for k in ops)
        cold = sum(max(0.0, own["cold"][k]) for k in ops)
        weights = sum(k.weights for k in ops)
        rows.append({"key": c.key(), "weights": weights, "units": len(ops), "measured_ms": m,
                     "sum_hot_ms": hot, "sum_cold_ms": cold})  # fmt: skip
        print(f"subnet {c.key()}: {weights / 1e6:6.2f}M weights, {len(ops):2d} units: measured {m:.4f} ms; "
              f"units hot {hot:.4f} ms ({hot / m:.2f}x), cold {cold:.4f} ms ({cold / m:.2f}x)")  # fmt: skip
    worst = sorted(keys, key=lambda k: own["hot"][k] - own["cold"][k])[:5]
    for k in worst:
        print(
            f"  {k.describe()}: {k.weights:,} weights, "
            f"hot {own['hot'][k] * 1e3:.1f} us, cold {own['cold'][k] * 1e3:.1f} us"
        )
    out = {
        "command": "benchmarks/unit_cache.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "flush_mb": args.flush_mb,
        "subnets": rows,
        "seconds": time.perf_counter() - t0,
    }
    path = Path(__file__).resolve().parent / "results" / "unit_cache.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"{out['seconds']:.0f} s; written {path}")


if __name__ == "__main__":
    main()
