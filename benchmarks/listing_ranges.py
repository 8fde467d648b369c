"""What showing latency ranges costs a listing: ``latency_range`` per space and device, and
``Catalog.spaces()`` / ``devices()`` (what ``GET /v1/spaces`` and ``/v1/devices`` answer) cold and cached.

    .venv/bin/python benchmarks/listing_ranges.py --data-dir DIR [--repeats 20]

DIR needs a built table for at least one space (``nasprune lut build --space mlp_digits --data-dir DIR``);
spaces without one are timed on the "no table" path. Prints figures and writes
``benchmarks/results/listing_ranges.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from _util import write


def _times(fn, repeats: int) -> dict:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    out.sort()
    return {
        "median_ms": round(statistics.median(out), 3),
        "p90_ms": round(out[int(0.9 * (len(out) - 1))], 3),
        "min_ms": round(out[0], 3),
        "n": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    from nasprune.budgets import latency_range
    from nasprune.registry import list_spaces
    from nasprune.service.api.catalog import Catalog
    from nasprune.settings import Settings

    t0 = time.perf_counter()
    latency_range(list_spaces()[0], "local-cpu", args.data_dir)  # imports (torch, onnx) and first table read
    first_ms = (time.perf_counter() - t0) * 1000
    per_space = {}
    for name in list_spaces():
        rng = latency_range(name, "local-cpu", args.data_dir)
        per_space[name] = {
            "table": rng.known,
            "range_ms": [rng.min_ms, rng.max_ms] if rng.known else None,
            **_times(lambda n=name: latency_range(n, "local-cpu", args.data_dir), args.repeats),
        }
        print(f"latency_range({name}, local-cpu): {rng.describe()}; {per_space[name]['median_ms']:.1f} ms median "
              f"(p90 {per_space[name]['p90_ms']:.1f}) per uncached call")  # fmt: skip

    settings = Settings(data_dir=args.data_dir)
    cold = _times(lambda: Catalog(settings).spaces(), max(3, args.repeats // 4))
    cat = Catalog(settings)
    cat.spaces()
    warm = _times(cat.spaces, args.repeats)
    warm_devices = _times(cat.devices, args.repeats)
    load = os.getloadavg()
    print(f"Catalog.spaces() cold {cold['median_ms']:.1f} ms median, cached {warm['median_ms']:.1f} ms; "
          f"devices() cached {warm_devices['median_ms']:.1f} ms; first call with imports {first_ms:.0f} ms; "
          f"load average {load[0]:.1f}")  # fmt: skip
    write(
        "listing_ranges",
        {
            "first_call_ms": round(first_ms, 1),
            "latency_range": per_space,
            "catalog_spaces_cold": cold,
            "catalog_spaces_cached": warm,
            "catalog_devices_cached": warm_devices,
            "load_avg": [round(x, 2) for x in load],
        },
    )


if __name__ == "__main__":
    main()
