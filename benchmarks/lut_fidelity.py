"""Latency-table fidelity on this machine (onnxruntime CPU, 1 intra-op thread, batch 1).

For each space: build the ``local-cpu`` table (ops profiled, correction fitted on N_FIT exported
subnets), then compare its predictions with end-to-end measurements of N_VALIDATE held-out random
subnets (exported with ``export_subnet`` and timed in onnxruntime). Prints median and p90 absolute
percentage error, share within +-10% and Spearman rank correlation, next to two baselines fitted
on the same subnets: MACs-proportional (a + b * MACs) and the uncorrected table (call cost + sum
of op times). Build time includes the held-out measurements.

    .venv/bin/python benchmarks/lut_fidelity.py [--n-validate 50] [--n-fit 20] [--spaces resnet_mnist mlp_digits]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write

from nasprune.cli._common import table as grid
from nasprune.latency import DeviceProfile, build_table
from nasprune.latency.ops import ops_for
from nasprune.latency.validate import error_report
from nasprune.registry import load_space

GOALS = {"median_ape": 5.0, "within_10": 0.95, "spearman": 0.95, "build_seconds": 300.0}


def macs_baseline(fit, held):
    """a + b * MACs by least squares on relative error, fitted on the table's fit subnets."""
    x = np.array([[1.0, s.macs] for s in fit])
    y = np.array([s.measured_ms for s in fit])
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    return [coef[0] + coef[1] * s.macs for s in held]


def figures(report) -> dict:
    return {
        "n": report.n,
        "median_ape": round(report.median_ape, 3),
        "p90_ape": round(report.p90_ape, 3),
        "max_ape": round(report.max_ape, 3),
        "within_10": round(report.within_10, 4),
        "spearman": None if report.spearman is None else round(report.spearman, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-validate", type=int, default=50, help="held-out subnets per space (%(default)s)")
    ap.add_argument("--n-fit", type=int, default=20, help="subnets the correction is fitted on (%(default)s)")
    ap.add_argument("--spaces", nargs="+", default=["resnet_mnist", "mlp_digits"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = DeviceProfile.local()
    print(f"device: {device.describe()}\n")
    rows, results = [], []
    for name in args.spaces:
        space = load_space(name)
        table = build_table(space, device, n_fit=args.n_fit, n_validate=args.n_validate, seed=args.seed, progress=True)
        held = table.error.samples
        measured = [s.measured_ms for s in held]
        raw = [table.correction.overhead_ms + sum(table.op_ms(k) for k in ops_for(space, s.config)) for s in held]
        predictors = {
            "latency table": table.error,
            "MACs-proportional": error_report(macs_baseline(table.fit_samples, held), measured),
            "uncorrected table": error_report(raw, measured),
        }
        c = table.correction
        rec = {
            "space": name,
            "subnets_in_space": space.size,
            "op_keys": len(table),
            "n_fit": args.n_fit,
            "build_seconds": round(table.build_seconds, 1),
            "correction": c.model_dump(),
            "measured_ms_range": [round(min(measured), 5), round(max(measured), 5)],
            "predicted_min_ms": round(table.min_latency(), 5),
            "predicted_max_ms": round(table.max_latency(), 5),
            "predictors": {label: figures(r) for label, r in predictors.items()},
        }
        lut = predictors["latency table"]
        rec["goals_met"] = {
            "median_ape": lut.median_ape <= GOALS["median_ape"],
            "within_10": lut.within_10 >= GOALS["within_10"],
            "spearman": (lut.spearman or 0) >= GOALS["spearman"],
            "build_seconds": table.build_seconds <= GOALS["build_seconds"],
        }
        results.append(rec)
        for label, r in predictors.items():
            rows.append(
                [
                    name,
                    label,
                    r.n,
                    f"{r.median_ape:.2f}%",
                    f"{r.p90_ape:.2f}%",
                    f"{100 * r.within_10:.0f}%",
                    "n/a" if r.spearman is None else f"{r.spearman:.3f}",
                    f"{table.build_seconds:.0f}" if label == "latency table" else "",
                ]
            )
        cache = f" + {c.cache_ms_per_mweight:.3f} ms/M weights above {c.cache_free_weights:,}"
        print(
            f"{name}: {len(table)} op keys, measured {min(measured) * 1000:.1f}-{max(measured) * 1000:.1f} us, "
            f"correction {c.intercept_ms * 1000:.2f} us + {c.scale:.3f} x ops{cache if c.cache_ms_per_mweight else ''}"
        )
    print()
    print(grid(rows, ["space", "predictor", "n", "median APE", "p90 APE", "within 10%", "Spearman", "build s"]))
    print(
        f"\ngoals (latency table): median APE <= {GOALS['median_ape']:g}%, >= {100 * GOALS['within_10']:.0f}% within "
        f"+-10%, Spearman >= {GOALS['spearman']}, build <= {GOALS['build_seconds']:.0f} s per space"
    )
    for rec in results:
        missed = [k for k, ok in rec["goals_met"].items() if not ok]
        print(f"  {rec['space']}: {'all met' if not missed else 'MISSED ' + ', '.join(missed)}")
    write(
        "lut_fidelity",
        {
            "command": "benchmarks/lut_fidelity.py " + " ".join(sys.argv[1:]),
            "device": device.model_dump(mode="json"),
            "device_fingerprint": device.fingerprint(),
            "n_validate": args.n_validate,
            "goals": GOALS,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
