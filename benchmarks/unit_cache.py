"""Why latency tables miss on torchvision models: units timed with warm weights vs cold ones.

    .venv/bin/python benchmarks/unit_cache.py [--model resnet18] [--subnets 6] [--flush-mb 16]

A latency table times every unit alone, back to back, so its weights stay in the CPU caches; inside
a network whose weights outgrow the caches, every unit reads its weights from further away. For a
few random subnets of the model's derived space (``--max-choices 2``, as in graph_lut_fidelity.py)
this times every unit's graph twice in interleaved rounds, *hot* (calls back to back, as the table
does) and *cold* (``--flush-mb`` of memory written before each call), each minus its producer and
consumer timed the same way, and the subnet itself end to end. It prints, per subnet, the summed
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
from nasprune.export import export_subnet
from nasprune.graph import analyze_model, build_model, derive_space
from nasprune.latency.graphs import (
    consumer_baseline,
    consumer_model,
    consumer_of,
    null_model,
    op_model,
    producer_model,
    producer_of,
)
from nasprune.latency.ops import ops_for
from nasprune.latency.profile import deployable_supernet
from nasprune.latency.timing import feed_for, make_session


def time_all(models: list, rounds: int, burst: int, flush: np.ndarray | None, seed: int) -> list[float]:
    """Median ms per model over interleaved rounds; with ``flush``, the buffer is written before every call."""
    sessions = [make_session(m, 1) for m in models]
    feeds = [feed_for(s, 1) for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(5):
            s.run(None, f)
    samples: list[list[float]] = [[] for _ in models]
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for i in rng.permutation(len(models)):
            s, f = sessions[i], feeds[i]
            s.run(None, f)  # settle
            for _ in range(burst):
                if flush is not None:
                    flush += 1.0
                t0 = time.perf_counter_ns()
                s.run(None, f)
                samples[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [float(np.median(x)) for x in samples]


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
    space = derive_space(analyze_model(model, torch.zeros(1, *shape)), f"cache_{args.model}", ref, 10,
                         model_kwargs={"num_classes": 10}, max_choices=2)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    cfgs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(args.subnets - 2)]
    keys = sorted({k for c in cfgs for k in ops_for(space, c)})
    producers = sorted({p for k in keys if (p := producer_of(k)) is not None})
    consumers = sorted({c for k in keys if (c := consumer_of(k)) is not None})
    cbase = sorted({consumer_baseline(c) for c in consumers} - set(producers))
    graphs = [op_model(k) for k in keys] + [producer_model(p) for p in producers]
    graphs += [consumer_model(c) for c in consumers] + [producer_model(p) for p in cbase] + [null_model()]
    flush = np.zeros(int(args.flush_mb * 2**20) // 8)
    print(f"{args.model}: {len(keys)} units in {len(cfgs)} subnets, {len(graphs)} graphs timed hot and cold")
    own = {}
    for mode, buf in (("hot", None), ("cold", flush)):
        ms = time_all(graphs, args.rounds, args.burst, buf, args.seed)
        n_k, n_p, n_c = len(keys), len(producers), len(consumers)
        base = dict(zip(producers + cbase, ms[n_k : n_k + n_p] + ms[n_k + n_p + n_c : -1], strict=True))
        cons = {
            c: t - base[consumer_baseline(c)] for c, t in zip(consumers, ms[n_k + n_p : n_k + n_p + n_c], strict=True)
        }
        null = ms[-1]
        own[mode] = {
            k: t
            - (base[p] if (p := producer_of(k)) is not None else null)
            - (cons[c] if (c := consumer_of(k)) else 0.0)
            for k, t in zip(keys, ms[:n_k], strict=False)
        }
    with tempfile.TemporaryDirectory() as tmp:
        net = deployable_supernet(space)
        paths = []
        for i, c in enumerate(cfgs):
            export_subnet(net, c, Path(tmp) / f"s{i}.onnx")
            paths.append(str(Path(tmp) / f"s{i}.onnx"))
        measured = time_all(paths, args.rounds * 2, args.burst * 2, None, args.seed + 1)
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
