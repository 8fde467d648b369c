"""Graph-derived spaces per model: analysis, conversion, extraction and export time; parity; groups.

    .venv/bin/python benchmarks/graph_models.py [--models resnet18,cnn1d] [--repeats 3]

For each model (randomly initialised; nothing downloads weights): trace + analysis time, in-place
conversion time, extraction time of a random subnet, ONNX export time (dynamo exporter with checks),
the largest-subnet-vs-original difference (must be 0), extract-vs-select and ONNX-vs-torch parity
over random subnets, the number of channel groups, depth sequences, frozen ops and fixed groups.
Times are medians over ``--repeats`` runs with their min-max spread. Writes
benchmarks/results/graph_models.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nasprune.export import export_subnet
from nasprune.graph import GraphSupernet, analyze_model, build_model, fixed_groups, space_from_analysis
from nasprune.graph.supernet import extract

MODELS = {
    "resnet18": ("torchvision:resnet18", (3, 32, 32)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (3, 32, 32)),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", (3, 32, 32)),
    "squeezenet1_1": ("torchvision:squeezenet1_1", (3, 48, 48)),
    "cnn1d": ("nasprune.models.cnn1d:cnn1d", (1, 40)),
}


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def bench(name: str, repeats: int, n_subnets: int) -> dict:
    ref, shape = MODELS[name]
    times: dict[str, list[float]] = {"analysis_ms": [], "conversion_ms": [], "extraction_ms": [], "export_s": []}
    for r in range(repeats):
        torch.manual_seed(r)
        model = build_model(ref, {"num_classes": 10}).eval()
        x = torch.randn(4, *shape)
        with torch.no_grad():
            original = model(x)
        t = time.perf_counter()
        analysis = analyze_model(model, x[:1])
        times["analysis_ms"].append((time.perf_counter() - t) * 1e3)
        space = space_from_analysis(analysis, name, ref, 10, model_kwargs={"num_classes": 10})
        t = time.perf_counter()
        net = GraphSupernet(space, model)
        times["conversion_ms"].append((time.perf_counter() - t) * 1e3)
        rng = np.random.default_rng(r)
        cfgs = [space.smallest(), *(space.sample(rng) for _ in range(n_subnets - 1))]
        t = time.perf_counter()
        plains = [extract(net, c) for c in cfgs]
        times["extraction_ms"].append((time.perf_counter() - t) * 1e3 / len(cfgs))
        with torch.no_grad():
            largest_diff = float((net(x) - original).abs().max())
            parity = 0.0
            for c, plain in zip(cfgs, plains, strict=True):
                with net.select(c):
                    parity = max(parity, float((net(x) - plain(x)).abs().max()))
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            onnx_diff = max(export_subnet(net, c, Path(tmp) / f"{i}.onnx").max_abs_diff for i, c in enumerate(cfgs[:2]))
            times["export_s"].append((time.perf_counter() - t) / 2)
    return {
        "model": ref,
        "input_shape": list(shape),
        "groups": len(space.groups),
        "sequences": len(space.sequences),
        "subnets": float(space.size),
        "frozen_ops": [f"{f.node}: {f.reason}" for f in analysis.frozen],
        "fixed_groups": fixed_groups(analysis, space),
        "largest_vs_original_max_abs": largest_diff,
        "extract_vs_select_max_abs": parity,
        "onnx_vs_torch_max_abs": onnx_diff,
        "params_min_max": [net.num_params(space.smallest()), net.num_params(space.largest())],
        "macs_min_max": [net.macs(space.smallest()), net.macs(space.largest())],
        **{k: _spread(v) for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subnets", type=int, default=8, help="random subnets for the parity checks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    print(f"{'model':20} {'groups':>6} {'seqs':>4} {'frozen':>6} {'analysis ms':>12} {'convert ms':>10} "
          f"{'extract ms':>10} {'export s':>8} {'largest=orig':>12} {'extract':>8} {'onnx':>8}")  # fmt: skip
    for name in args.models.split(","):
        r = results[name] = bench(name, args.repeats, args.subnets)
        print(f"{name:20} {r['groups']:>6} {r['sequences']:>4} {len(r['frozen_ops']):>6} "
              f"{r['analysis_ms']['median']:>12.1f} {r['conversion_ms']['median']:>10.1f} "
              f"{r['extraction_ms']['median']:>10.2f} {r['export_s']['median']:>8.2f} "
              f"{r['largest_vs_original_max_abs']:>12.1e} {r['extract_vs_select_max_abs']:>8.1e} "
              f"{r['onnx_vs_torch_max_abs']:>8.1e}")  # fmt: skip
    out = Path(__file__).resolve().parent / "results" / "graph_models.json"
    out.write_text(json.dumps({"repeats": args.repeats, "results": results}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
