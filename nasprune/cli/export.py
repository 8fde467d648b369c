"""``nasprune export``: one subnet to a checked ONNX file."""

from __future__ import annotations

from pathlib import Path

from nasprune.cli._common import read_config


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export one subnet as a checked ONNX file",
        description=(
            "Extract a subnet (physically smaller tensors) from the supernet and export it to ONNX. "
            "The file is checked with onnx.checker and against torch with onnxruntime, and carries "
            "the space, subnet config, params and MACs in its metadata."
        ),
    )
    p.add_argument("--space", required=True, help="space name or YAML path")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help='subnet config: a JSON file or inline JSON {"depths":..,"widths":..}')
    which.add_argument("--largest", action="store_true", help="the largest subnet")
    which.add_argument("--smallest", action="store_true", help="the smallest subnet")
    p.add_argument("--checkpoint", type=Path, help="trained supernet checkpoint (default: untrained weights)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the .onnx file")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nasprune.export import export_subnet
    from nasprune.registry import create_supernet, load_space

    space = load_space(args.space)
    if args.checkpoint:
        from nasprune.train import load_checkpoint

        net = load_checkpoint(args.checkpoint, space)
    else:
        net = create_supernet(space)
    cfg = space.largest() if args.largest else space.smallest() if args.smallest else read_config(space, args.config)
    res = export_subnet(net.eval(), cfg, args.output)
    print(
        f"wrote {res.path} ({res.path.stat().st_size / 1024:.0f} KiB): subnet {cfg.key()}, "
        f"{net.num_params(cfg):,} params, {net.macs(cfg):,} MACs, "
        f"onnxruntime parity {res.max_abs_diff:.1e}, export {res.export_seconds:.1f} s"
    )
    return 0
