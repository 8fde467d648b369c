"""``nasprune prune``: a pruned model under a latency budget in minutes, without training (tier 0)."""

from __future__ import annotations

import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="a model under a latency budget in minutes, from trained weights, without training (tier 0)",
        description=(
            "Tier 0: sort the channels of a trained model by importance on the dataset's calibration split (Fisher "
            "or Taylor: the loss increase of removing each), measure there what each width and depth choice costs "
            "in loss, choose the choices that lose least while the device's latency table predicts the budget (a "
            "knapsack over the space's own choices), extract that subnet and repair it without training "
            "(BatchNorm recalibration, then each layer whose input lost channels refitted by least squares to "
            "the original's outputs). The model is exported to ONNX, checked, measured on this machine (chosen "
            "again for less if the measurement misses the budget) and scored on validation and test. No supernet "
            "is trained: 'nasprune search' trains one and can end more accurate, in far more time. An impossible "
            "budget is refused before any work, with the smallest achievable one. See docs/tier0.md."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", help="space name (see 'nasprune spaces list') or a space YAML file")
    src.add_argument("--model", metavar="REF",
                     help="your own model: torchvision:NAME or PKG.MODULE:FACTORY (local, trusted code; called with "
                          "num_classes from --dataset); its search space is derived from its graph")  # fmt: skip
    p.add_argument("--weights", type=Path, metavar="FILE.safetensors",
                   help="the trained weights to prune (default: the space's own weights, else the trained supernet "
                        "of --space in the data dir; with --model, the factory's own)")  # fmt: skip
    p.add_argument("--dataset", help="calibration, validation and test data (default with --space: the space's)")
    p.add_argument("--device", default="local-cpu", help="device whose latency table is used (%(default)s)")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget in ms at batch 1")
    p.add_argument(
        "--importance",
        choices=["fisher", "taylor", "l1"],
        default="fisher",
        help="the order channels are kept in: fisher (second order, default), taylor (first order) or l1 (filter "
        "norms; only with --values measured)",
    )
    p.add_argument("--values", choices=["measured", "estimate"], default="measured",
                   help="what each width and depth costs in loss: measured on the calibration split (default; one "
                        "forward pass per choice) or estimated from the importance scores (no extra pass)")  # fmt: skip
    p.add_argument("--repair", choices=["ls", "bn", "none"], default="ls",
                   help="ls: BatchNorm recalibration and least-squares layer reconstruction (default); bn: "
                        "recalibration only; none: the extracted subnet as it is")  # fmt: skip
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="times to choose again for less when the measured latency misses the budget (%(default)s)",
    )
    p.add_argument("--data-dir", type=Path, help="data dir (default: $NASPRUNE_DATA_DIR or ./.nasprune)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.onnx", help="where to write the model")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys

    from nasprune.data import check_dataset_fits, load_dataset
    from nasprune.errors import BudgetError, ConfigError
    from nasprune.latency.store import get_table
    from nasprune.paths import data_dir
    from nasprune.registry import create_supernet, load_space

    t_start = time.perf_counter()
    if not args.budget_ms > 0:
        raise ConfigError(f"--budget-ms: {args.budget_ms:g} is not a positive latency")
    if args.retries < 0:
        raise ConfigError(f"--retries: {args.retries} is negative")
    if args.importance == "l1" and args.values == "estimate":
        raise ConfigError("--importance: l1 has no loss scale to estimate with; use --values measured")
    if args.output.suffix != ".onnx":
        raise ConfigError(f"--output: '{args.output}' must end in .onnx")
    root = data_dir(args.data_dir)

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.1f} s] {msg}", flush=True)

    checkpoint = None
    if args.model:
        from nasprune.cli.search import _derived_space

        if args.weights is None:
            say(f"no --weights: pruning the weights {args.model} is built with")
        space = load_space(_derived_space(args, root))
        dataset = args.dataset
    else:
        space = load_space(args.space)
        dataset = args.dataset or space.dataset
        if args.weights is None:  # the recorded ones: there and the same file, before the table is measured
            from nasprune.cli.search import check_recorded_weights

            check_recorded_weights(space, args.space)
        if args.weights is None and space.weights is None:
            from nasprune.train import supernet_path

            checkpoint = supernet_path(space, root)
            if not checkpoint.is_file():
                raise ConfigError(
                    f"--weights: space '{space.name}' names no trained weights and there is no trained supernet of "
                    f"it at {checkpoint}; give --weights FILE.safetensors (tier 0 prunes a trained model: it trains "
                    "nothing)"
                )
    if not dataset:
        raise ConfigError("--dataset: the space names no dataset; give one")
    check_dataset_fits(dataset, space, root)
    say(f"latency table of {space.name} on {args.device} (measured once if missing: a few minutes)")
    table = get_table(space, args.device, data_dir=root, progress=sys.stderr.isatty())
    fastest = table.min_latency()
    if args.budget_ms < fastest:  # before any slow work: no subnet can meet it
        raise BudgetError(
            f"--budget-ms: {args.budget_ms:g} ms is below the fastest subnet of '{space.name}' on '{args.device}' "
            f"({fastest:.4f} ms predicted); the smallest achievable budget is {fastest:.4f} ms (budgets from "
            f"{fastest:.4f} to {table.max_latency():.4f} ms trade accuracy for latency)"
        )
    say(f"predicted latency range {fastest:.4f} - {table.max_latency():.4f} ms; budget {args.budget_ms:g} ms")
    ds = load_dataset(dataset, data_dir=root)
    if checkpoint is not None:
        from nasprune.train import load_checkpoint

        say(f"pruning the largest subnet of the trained supernet {checkpoint}")
        source = load_checkpoint(checkpoint, space)
    else:
        source = create_supernet(space, args.weights)
    from nasprune.search.tier0 import Tier0
    from nasprune.search.tier0.deliver import deliver

    # a trained supernet keeps its channel order (its subnets were trained on it); a model is sorted
    pruner = Tier0(source, space, table, ds, importance=args.importance, values=args.values,
                   reorder=checkpoint is None)  # fmt: skip
    refs = root / "tier0" / "latency_references" / f"{space.name}__{args.device}"
    out = deliver(pruner, args.budget_ms, args.output, repair=args.repair, retries=args.retries,
                  references_dir=refs, on_progress=say)  # fmt: skip
    r = out.result
    widths = ", ".join(f"{g}={w}" for g, w in r.config.widths.items())
    depths = ", ".join(f"{s}={d}" for s, d in r.config.depths.items())
    print(f"config: widths {widths}" + (f"; depths {depths}" if depths else ""))
    if r.layers:
        before = sum(f.error_before for f in r.layers) / len(r.layers)
        after = sum(f.error_after for f in r.layers) / len(r.layers)
        print(f"least squares: {len(r.layers)} layers refitted, mean relative error {before:.3f} -> {after:.3f}")
    steps = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in r.timings.items() if k != "total_s")
    print(f"steps: {steps}")
    measured = (f"measured {out.measured_ms:.4g} ms" if out.measured_ms is not None
                else f"unverified ({out.unverified_reason})")  # fmt: skip
    print(f"tier 0 model: validation {out.val_accuracy:.2%}, test {out.test_accuracy:.2%}; predicted "
          f"{r.predicted_ms:.4g} ms, {measured}, budget {args.budget_ms:.4g} ms"
          f"{' (verified)' if out.verified else ''}")  # fmt: skip
    print(f"wrote {args.output} in {time.perf_counter() - t_start:.0f} s")
    return 0 if out.verified or out.measured_ms is None else 1
