"""Adding and loading a large ``.npy`` dataset: time and peak memory.

Writes ``x.npy`` (float32, N x 1 x 1024, ``--gib`` GiB) and ``y.npy`` (4 classes) once, then per repeat,
each step in a fresh process (so its peak RSS is its own): ``add`` (validate, hash, copy, statistics:
``DatasetStore.add``), ``load`` (open the stored dataset, streamed) and one ``epoch`` of shuffled
train batches of 256, plus reading the val split into memory. Peak memory is the process's maximum
RSS (``VmHWM``); ``baseline`` is the RSS after its imports, before the step. The source file was just written,
so reads come from the page cache where memory allows (warm cache: the figures are CPU and memory
bound, not disk bound).

    nice -n 10 .venv/bin/python benchmarks/data_npy.py [--gib 1.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _util import write

FEATURES = 1024

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from nasprune.data import load_dataset
from nasprune.datasets import DatasetStore
import nasprune.datasets.stream, sklearn.model_selection

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def rss():
    return status("VmRSS")

step, folder, data_dir = sys.argv[1], sys.argv[2], sys.argv[3]
base = rss()
out = {"baseline_rss": base}
t0 = time.perf_counter()
if step == "add":
    info = DatasetStore.at(data_dir).add("big", folder)
    out.update(seconds=time.perf_counter() - t0, n_bytes=info.n_bytes, streamed=info.streamed)
else:
    ds = load_dataset("big", data_dir=data_dir)
    out["load_s"] = time.perf_counter() - t0
    out["kind"] = type(ds).__name__
    t1 = time.perf_counter()
    n = 0
    for x, y in ds.loader("train", batch_size=256, shuffle=True, seed=0):
        n += len(y)
    out["epoch_s"] = time.perf_counter() - t1
    out["epoch_peak_rss"] = status("VmHWM")
    out["train_samples"] = n
    t2 = time.perf_counter()
    xv, _ = ds.tensors("val")
    out["val_s"] = time.perf_counter() - t2
    out["val_bytes"] = xv.numel() * 4
out["peak_rss"] = status("VmHWM")  # this process's own peak (ru_maxrss keeps the parent's across exec)
print(json.dumps(out))
"""


def make_source(folder: Path, gib: float) -> int:
    n = int(gib * 2**30) // (4 * FEATURES)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, 1, FEATURES))
    rng = np.random.default_rng(0)
    y = np.arange(n) % 4
    for s in range(0, n, 8192):
        yy = y[s : s + 8192]
        x[s : s + 8192] = rng.standard_normal((len(yy), 1, FEATURES), dtype=np.float32) + yy[:, None, None] * 0.05
    x.flush()
    del x
    np.save(folder / "y.npy", y)
    return n


def child(step: str, folder: Path, data_dir: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, step, str(folder), str(data_dir)], capture_output=True,
                       text=True, timeout=1800)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"{step} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of x.npy in GiB (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of add and load (default 3)")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: the system temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nasprune-bench-data-", dir=args.tmp))
    try:
        src = work / "arrays"
        src.mkdir()
        n = make_source(src, args.gib)
        adds, loads = [], []
        for _ in range(args.repeats):
            data_dir = work / "data"
            adds.append(child("add", src, data_dir))
            loads.append(child("load", src, data_dir))
            shutil.rmtree(data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    n_bytes = adds[0]["n_bytes"]
    result = {
        "gib": args.gib,
        "samples": n,
        "bytes": n_bytes,
        "add_s": spread([a["seconds"] for a in adds]),
        "add_mb_per_s": spread([n_bytes / mib / a["seconds"] for a in adds]),
        "add_peak_rss_mib": spread([a["peak_rss"] / mib for a in adds]),
        "add_above_baseline_mib": spread([(a["peak_rss"] - a["baseline_rss"]) / mib for a in adds]),
        "load_s": spread([r["load_s"] for r in loads]),
        "epoch_s": spread([r["epoch_s"] for r in loads]),
        "val_s": spread([r["val_s"] for r in loads]),
        "val_mib": loads[0]["val_bytes"] / mib,
        "load_epoch_peak_rss_mib": spread([r["peak_rss"] / mib for r in loads]),
        "epoch_above_baseline_mib": spread([(r["epoch_peak_rss"] - r["baseline_rss"]) / mib for r in loads]),
        "load_epoch_above_baseline_mib": spread([(r["peak_rss"] - r["baseline_rss"]) / mib for r in loads]),
        "dataset_kind": loads[0]["kind"],
        "train_samples": loads[0]["train_samples"],
    }
    print(f"{n:,} samples, {n_bytes / mib:,.0f} MiB of float32 ({loads[0]['kind']}); {args.repeats} repeats, "
          "median [min-max]")  # fmt: skip
    rows = [
        ("add_s", "add (validate, hash, copy, stats) s"),
        ("add_mb_per_s", "add MiB/s"),
        ("add_above_baseline_mib", "add peak RSS above imports, MiB"),
        ("load_s", "load (open) s"),
        ("epoch_s", "one epoch of train batches s"),
        ("epoch_above_baseline_mib", "load + epoch peak RSS above imports, MiB"),
        ("val_s", f"val split into memory ({result['val_mib']:.0f} MiB) s"),
        ("load_epoch_above_baseline_mib", "load + epoch + val peak RSS above imports, MiB"),
    ]
    for key, label in rows:
        s = result[key]
        print(f"  {label:50s} {s['median']:9.2f} [{s['min']:.2f}-{s['max']:.2f}]")
    write("data_npy", result)


if __name__ == "__main__":
    main()
