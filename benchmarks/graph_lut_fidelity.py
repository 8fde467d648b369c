"""Latency-table fidelity on graph-derived spaces: build a table per model, report its held-out error.

    .venv/bin/python benchmarks/graph_lut_fidelity.py [--models cnn1d,resnet18] [--max-choices 8]
        [--n-fit 20] [--n-validate 50] [--input-size 224] [--flush-kb 1024] [--save DIR]
        [--busy 2] [--statistic "median of all calls"]
    .venv/bin/python benchmarks/graph_lut_fidelity.py --space minilm64.yaml [--n-validate 50]

``--space FILE`` takes a space saved by ``nasprune model inspect --save`` instead (e.g. MiniLM-L6:
``nasprune model inspect --model hf:minilm-l6 --input-shape 64 --no-latency --save minilm64.yaml``;
its sequence length is the input shape), keyed by the file's stem.

For each model (randomly initialised; latency does not depend on weight values): derive its space,
profile every unit key with onnxruntime (1 thread, batch 1), fit the correction on ``--n-fit``
subnets and measure ``--n-validate`` held-out random subnets end to end (export + interleaved
timing). Prints median/p90 APE, the share within +-10%, Spearman, the number of keys and the build
time; updates each model's entry in benchmarks/results/graph_lut_fidelity.json (key: the model,
``@SIZE`` with ``--input-size``, ``+flushNkb`` with ``--flush-kb``, ``#seedN`` with ``--seed``).
Goal (issue "Prune your own model"): median APE <= 3% and >= 99% within +-10% on 50 held-out subnets.
``--busy N`` builds each table with N processes spinning beside it (the issue "Latency tables that hold
on a busy machine" asks for 2); the key gets ``+busyN``, and ``+pooled`` with the old statistic.

The image models default to small inputs (32x32, squeezenet 48x48: the CIFAR-sized data this project
trains on); ``--input-size 224`` times them at torchvision's own resolution. The two regimes differ:
at 32x32 the late stages are 1x1-2x2 maps with up to 512 channels, weight-bound, so a unit's time
depends on whether the rest of the network left its weights in L2 (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._util import spinners
from benchmarks.graph_models import MODELS
from nasprune.graph import analyze_model, build_model, space_from_analysis
from nasprune.latency.ops import all_ops
from nasprune.latency.profile import ProfileSettings, build_table
from nasprune.latency.settings import STATISTICS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn1d,resnet18,mobilenet_v3_small")
    ap.add_argument("--max-choices", type=int, default=8, help="width choices per group (fewer: fewer keys)")
    ap.add_argument("--n-fit", type=int, default=20)
    ap.add_argument("--n-validate", type=int, default=50)
    ap.add_argument("--flush-kb", type=int, default=0, help="ProfileSettings.flush_kb (units timed with cold weights)")
    ap.add_argument(
        "--input-size",
        type=int,
        default=0,
        help="input height = width of the image models (default: graph_models.MODELS, 32 or 48; torchvision's is 224)",
    )
    ap.add_argument("--seed", type=int, default=0, help="build_table's seed: which fit and held-out subnets are drawn")
    ap.add_argument("--e2e-rounds", type=int, default=30, help="ProfileSettings.e2e_rounds (x 20 timed calls a subnet)")
    ap.add_argument("--busy", type=int, default=0,
                    help="processes spinning on the CPU during each build (the issue's busy machine: 2)")  # fmt: skip
    ap.add_argument("--statistic", choices=STATISTICS, default=STATISTICS[0], help="ProfileSettings.statistic")
    ap.add_argument(
        "--save",
        type=Path,
        help="also write each table (entries, fit and held-out samples) to DIR/<model>.json, for refitting offline",
    )
    ap.add_argument("--space", type=Path, action="append", default=[],
                    help="a saved space file (repeatable) instead of --models")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {}
    for name in [p.stem for p in args.space] or args.models.split(","):
        if args.space:
            from nasprune.registry import load_space

            space = load_space(next(p for p in args.space if p.stem == name))
            shape = space.input_shape
        else:
            ref, shape = MODELS[name]
            if args.input_size and len(shape) == 3:
                shape = (shape[0], args.input_size, args.input_size)
            model = build_model(ref, {"num_classes": 10}).eval()
            analysis = analyze_model(model, torch.zeros(1, *shape))
            space = space_from_analysis(analysis, f"fidelity_{name}", ref, 10, model_kwargs={"num_classes": 10},
                                 max_choices=args.max_choices)  # fmt: skip
        t0 = time.perf_counter()
        settings = ProfileSettings(flush_kb=args.flush_kb, e2e_rounds=args.e2e_rounds, statistic=args.statistic)
        with spinners(args.busy):
            table = build_table(space, n_fit=args.n_fit, n_validate=args.n_validate, settings=settings,
                                seed=args.seed)  # fmt: skip
        seconds = time.perf_counter() - t0
        err = table.error
        out[name] = {
            "command": "benchmarks/graph_lut_fidelity.py " + " ".join(sys.argv[1:]),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_fit": args.n_fit,
            "flush_kb": args.flush_kb,
            "input_shape": list(shape),
            "e2e_rounds": args.e2e_rounds,
            "seed": args.seed,
            "max_choices": args.max_choices,
            "statistic": args.statistic,
            "busy": args.busy,
            "build_load": table.build_load.model_dump() if table.build_load else None,
            "keys": len(all_ops(space)),
            "build_s": seconds,
            "median_ape": err.median_ape,
            "p90_ape": err.p90_ape,
            "within_10": err.within_10,
            "spearman": err.spearman,
            "n": err.n,
            "correction": table.correction.model_dump(),
            "min_ms": table.min_latency(),
            "max_ms": table.max_latency(),
        }
        if args.save:
            table.save(args.save / f"{name}.json")
        print(f"{name:20} keys {out[name]['keys']:5}  {err.summary()}  build {seconds:.0f} s; "
              f"{table.build_load.describe()}", flush=True)  # fmt: skip
    path = Path(__file__).resolve().parent / "results" / "graph_lut_fidelity.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    # one model per run is common: keep the other models' last figures, and other settings' (see _key)
    merged.update({_key(k, args): v for k, v in out.items()})
    path.write_text(json.dumps(merged, indent=1))
    print(f"written {path}")


def _key(model: str, args) -> str:
    """The JSON key of a model's figures: its name, plus what differs from the default run."""
    size = f"@{args.input_size}" if args.input_size else ""
    flush = f"+flush{args.flush_kb}kb" if args.flush_kb else ""
    busy = f"+busy{args.busy}" if args.busy else ""
    stat = "+pooled" if args.statistic == "median of all calls" else ""
    return model + size + flush + busy + stat + (f"#seed{args.seed}" if args.seed else "")


if __name__ == "__main__":
    main()
