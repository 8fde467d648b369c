"""``nasprune demo``: the main job on embedded defaults, end to end."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on this machine",
        description=(
            "Lists the search spaces, then for each space extracts its largest and smallest subnet, "
            "exports both to checked ONNX files and measures them with onnxruntime (1 thread, batch 1)."
        ),
    )
    p.add_argument("--output", type=Path, default=Path("runs/demo"), help="where to write the models (%(default)s)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nasprune.cli._common import table
    from nasprune.cli.spaces import _list
    from nasprune.export import export_subnet
    from nasprune.latency.timing import measure_model
    from nasprune.registry import create_supernet, list_spaces

    _list(args)
    print()
    rows = []
    for name in list_spaces():
        net = create_supernet(name).eval()
        for label, cfg in (("largest", net.space.largest()), ("smallest", net.space.smallest())):
            res = export_subnet(net, cfg, args.output / f"{name}-{label}.onnx")
            t = measure_model(res.path)
            rows.append([name, label, f"{net.num_params(cfg):,}", f"{net.macs(cfg):,}", f"{t.median_ms:.3f}",
                         str(res.path)])
    print(table(rows, ["space", "subnet", "params", "MACs", "ms (ORT, 1 thread)", "file"]))
    return 0
