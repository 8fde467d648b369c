"""``nasprune export``: one subnet to a checked ONNX file, with trained weights and its own BatchNorm statistics."""

from __future__ import annotations

from pathlib import Path

from nasprune.cli._common import read_config


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export one subnet as a checked ONNX file",
        description=(
            "Extract a subnet (physically smaller tensors) from the trained supernet, re-estimate its BatchNorm "
            "statistics on the dataset's calibration split (as the search does before scoring it: the shared "
            "statistics belong to no single subnet) and export it to ONNX. The file is checked with onnx.checker "
            "and against torch with onnxruntime, and carries the space, subnet config, params, MACs and "
            "validation accuracy in its metadata. Without a trained supernet it refuses, unless --untrained."
        ),
    )
    p.add_argument("--space", required=True, help="space name or YAML path")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help='subnet config: a JSON file or inline JSON {"depths":..,"widths":..}')
    which.add_argument("--largest", action="store_true", help="the largest subnet")
    which.add_argument("--smallest", action="store_true", help="the smallest subnet")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        type=Path,
        help="trained supernet checkpoint (default: the one 'nasprune train' or a search left in the data dir)",
    )
    weights.add_argument(
        "--untrained",
        action="store_true",
        help="export the supernet's initial weights (to try the export itself: the model predicts nothing useful)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="checkpoints and datasets (default: $NASPRUNE_DATA_DIR or ./.nasprune)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the .onnx file")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nasprune.errors import CheckpointError
    from nasprune.export import export_subnet
    from nasprune.paths import data_dir
    from nasprune.registry import create_supernet, load_space

    space = load_space(args.space)
    cfg = space.largest() if args.largest else space.smallest() if args.smallest else read_config(space, args.config)
    root = data_dir(args.data_dir)
    if args.untrained:
        net = create_supernet(space).eval()
        res = export_subnet(net, cfg, args.output, {"weights": "untrained"})
        note = "UNTRAINED weights (--untrained): its outputs mean nothing"
    else:
        from nasprune.data import load_dataset
        from nasprune.evaluate import Evaluator
        from nasprune.train import checkpoint_id, load_checkpoint, supernet_path

        path = args.checkpoint or supernet_path(space, root)
        if not Path(path).is_file():
            raise CheckpointError(
                f"no trained supernet of '{space.name}' at {path}: train one with 'nasprune train --space "
                f"{space.name}' (a search trains it too), give --checkpoint FILE, or pass --untrained to export "
                "untrained weights"
            )
        net = load_checkpoint(path, space).eval()
        evaluator = Evaluator(net, load_dataset(space.dataset, data_dir=root), checkpoint_id(path))
        accuracy = evaluator.accuracy(cfg, "val")
        n_calib = len(evaluator.dataset.tensors("calib")[1])
        meta = {"accuracy": accuracy, "weights": str(path), "bn_recalibrated": True}
        res = export_subnet(net, cfg, args.output, meta, model=evaluator.subnet(cfg))
        note = (
            f"trained weights from {path}; BatchNorm recalibrated on {n_calib} calibration images of "
            f"'{space.dataset}'; validation accuracy {accuracy:.2%} (as the search scores this subnet)"
        )
    print(
        f"wrote {res.path} ({res.path.stat().st_size / 1024:.0f} KiB): subnet {cfg.key()}, "
        f"{net.num_params(cfg):,} params, {net.macs(cfg):,} MACs, "
        f"onnxruntime parity {res.max_abs_diff:.1e}, export {res.export_seconds:.1f} s"
    )
    print(f"  {note}")
    return 0
