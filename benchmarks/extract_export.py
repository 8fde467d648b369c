"""For every space: params, MACs, export time and onnxruntime batch-1 latency of the largest and
smallest subnet (1 intra-op thread, median of RUNS runs after warm-up); and the time to extract a
random subnet, plain and through a warm slice cache (what a search's evaluator does), against
``select`` alone.

    .venv/bin/python benchmarks/extract_export.py [--runs 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _util import write

from nasprune.cli._common import table
from nasprune.export import export_subnet
from nasprune.graph.supernet import extract
from nasprune.latency.timing import measure_model
from nasprune.registry import create_supernet, list_spaces


def extraction_ms(net, n: int = 100) -> dict:
    """Mean ms per random subnet: ``select`` alone, plain ``extract``, ``extract`` with a slice cache
    already warmed on ``n`` other random subnets."""
    rng = np.random.default_rng(0)
    warm, cfgs = [net.space.sample(rng) for _ in range(n)], [net.space.sample(rng) for _ in range(n)]
    cache: dict = {}
    for cfg in warm:
        extract(net, cfg, cache)

    def per_call(fn) -> float:
        t0 = time.perf_counter()
        for cfg in cfgs:
            fn(cfg)
        return 1000 * (time.perf_counter() - t0) / len(cfgs)

    def select_only(cfg):
        with net.select(cfg):
            pass

    return {
        "select_ms": per_call(select_only),
        "extract_ms": per_call(lambda cfg: extract(net, cfg)),
        "extract_cached_ms": per_call(lambda cfg: extract(net, cfg, cache)),
        "subnets": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=500, help="timed runs per model (default %(default)s)")
    args = ap.parse_args()
    out, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_spaces():
            net = create_supernet(name).eval()
            for label, cfg in (("largest", net.space.largest()), ("smallest", net.space.smallest())):
                res = export_subnet(net, cfg, Path(tmp) / f"{name}-{label}.onnx")
                t = measure_model(res.path, threads=1, batch=1, runs=args.runs, warmup=50)
                rec = {
                    "space": name,
                    "subnet": label,
                    "key": cfg.key(),
                    "params": net.num_params(cfg),
                    "macs": net.macs(cfg),
                    "export_s": round(res.export_seconds, 3),
                    "parity_max_abs_diff": res.max_abs_diff,
                    "latency_median_ms": round(t.median_ms, 4),
                    "latency_p90_ms": round(t.p90_ms, 4),
                    "runs": t.count,
                }
                out.append(rec)
                rows.append(
                    [
                        name,
                        label,
                        f"{rec['params']:,}",
                        f"{rec['macs']:,}",
                        f"{rec['export_s']:.2f}",
                        f"{t.median_ms:.4f}",
                        f"{t.p90_ms:.4f}",
                    ]
                )
    print(table(rows, ["space", "subnet", "params", "MACs", "export s", "median ms", "p90 ms"]))
    extraction, rows = {}, []
    for name in list_spaces():
        e = extraction[name] = extraction_ms(create_supernet(name).eval())
        rows.append([name, f"{e['select_ms']:.2f}", f"{e['extract_ms']:.2f}", f"{e['extract_cached_ms']:.2f}"])
    print()
    print(table(rows, ["space", "select ms", "extract ms", "extract ms (warm slice cache)"]))
    write(
        "extract_export",
        {"command": "benchmarks/extract_export.py", "runs": args.runs, "results": out, "extraction": extraction},
    )


if __name__ == "__main__":
    main()
