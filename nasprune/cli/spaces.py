"""``nasprune spaces list|show``."""

from __future__ import annotations

from pathlib import Path

from nasprune.cli._common import human, table


def register(sub) -> None:
    p = sub.add_parser(
        "spaces",
        help="list and inspect search spaces",
        description="List the registered search spaces or show one in detail.",
    )
    s = p.add_subparsers(dest="spaces_cmd", metavar="ACTION", required=True)
    ls = s.add_parser(
        "list",
        help="one line per registered space, with its latency range per device",
        description=(
            "One line per registered space and device: size, params, and the predicted latency of its fastest "
            "and slowest subnet where a latency table exists (a budget inside that range trades accuracy for "
            "latency). Where none exists, says how to build it."
        ),
    )
    _data_dir(ls)
    ls.add_argument("--url", help="list the spaces of this service instead (GET /v1/spaces)")
    ls.add_argument("--token", help="API key or token (default $NASPRUNE_API_KEY or $NASPRUNE_API_TOKEN)")
    ls.set_defaults(func=_list)
    show = s.add_parser(
        "show",
        help="choices, size, min/max params and MACs, and latency range of a space",
        description=(
            "Depth and width choices of a space, its extreme subnets, and its latency range on each device: "
            "predicted by the latency table where one exists; otherwise, on this machine, the smallest and "
            "largest subnet are exported and timed now (an estimate). Ends with a suggested budget and the "
            "search command to run."
        ),
    )
    show.add_argument("name", help="space name (see 'nasprune spaces list') or path to a YAML file")
    show.add_argument(
        "--no-latency",
        action="store_true",
        help="without a latency table, do not time the smallest and largest subnet (a few seconds)",
    )
    _data_dir(show)
    show.set_defaults(func=_show)


def _data_dir(p) -> None:
    p.add_argument(
        "--data-dir", type=Path, help="where latency tables are (default: $NASPRUNE_DATA_DIR or ./.nasprune)"
    )


def _list(args) -> int:
    if args.url:
        return _list_service(args)
    from nasprune.budgets import local_devices
    from nasprune.registry import create_supernet, list_spaces, load_space

    rows, hints = [], []
    devices = local_devices(args.data_dir)
    for name in list_spaces():
        sp = load_space(name)
        net = create_supernet(sp)
        first = True
        for rng in _ranges(sp, devices, args.data_dir):
            if not rng.known:
                hints.append(f"{name}: {rng.missing}")
            head = (
                [name, sp.model, sp.dataset, "x".join(map(str, sp.input_shape)), f"{sp.size:,}",
                 f"{human(net.num_params(sp.smallest()))}-{human(net.num_params(sp.largest()))}"]
                if first else [""] * 6
            )  # fmt: skip
            first = False
            rows.append([*head, _device(rng), _range(rng)])
    print(table(rows, ["space", "model", "dataset", "input", "subnets", "params", "device", "latency ms"]))
    if hints:
        print("\nno latency table yet (the range shows once one is built):")
        print("\n".join(f"  {h}" for h in hints))
    return 0


def _list_service(args) -> int:
    from nasprune.cli.jobs import _cli_errors
    from nasprune.client import Client

    @_cli_errors
    def run(args) -> int:
        with Client(args.url, args.token) as c:
            spaces = c.spaces()
        rows = []
        for sp in spaces:
            ranges = sp.get("latency") or [{"device": "", "min_ms": None, "max_ms": None}]
            for i, r in enumerate(ranges):
                known = r.get("min_ms") is not None and r.get("max_ms") is not None
                head = [
                    sp["name"],
                    sp["model"],
                    sp["dataset"],
                    "x".join(map(str, sp["input_shape"])),
                    f"{sp['size']:,}",
                ]
                rows.append([*(head if i == 0 else [""] * 5), r.get("device", ""),
                             f"{r['min_ms']:.4g} .. {r['max_ms']:.4g}" if known else "no table"])  # fmt: skip
        print(table(rows, ["space", "model", "dataset", "input", "subnets", "device", "latency ms"]))
        return 0

    return run(args)


def _range(rng) -> str:
    return f"{rng.min_ms:.4g} .. {rng.max_ms:.4g}" if rng.known else "no table"


def _device(rng) -> str:
    return rng.device if rng.precision == "fp32" else f"{rng.device} ({rng.precision})"


def _ranges(space, devices: list[str], data_dir) -> list:
    """fp32 on the built-in device always (known or how to build it); other devices and int8 where a table exists."""
    from nasprune.budgets import latency_range

    out = []
    for device in devices:
        for precision in ("fp32", "int8"):
            rng = latency_range(space, device, data_dir, precision)
            if rng.known or (device == devices[0] and precision == "fp32"):
                out.append(rng)
    return out


def _show(args) -> int:
    from nasprune.registry import create_supernet, load_space

    sp = load_space(args.name)
    net = create_supernet(sp)
    print(f"{sp.name}: {sp.description}")
    print(f"model {sp.model}, dataset {sp.dataset}, input {tuple(sp.input_shape)}, {sp.num_classes} classes")
    print(f"subnets: {sp.size:,}")
    print()
    print(table([[s, ", ".join(map(str, c))] for s, c in sp.depth_choices().items()], ["depth sequence", "depths"]))
    print()
    print(table([[g, ", ".join(map(str, c))] for g, c in sp.width_layers().items()], ["channel group", "widths"]))
    print()
    rows = []
    for label, cfg in (("smallest", sp.smallest()), ("largest", sp.largest())):
        rows.append([label, f"{net.num_params(cfg):,}", f"{net.macs(cfg):,}", cfg.key()])
    print(table(rows, ["subnet", "params", "MACs", "key"]))
    print()
    from nasprune.budgets import local_devices

    ranges = _ranges(sp, local_devices(args.data_dir), args.data_dir)
    ref = args.name

    def note(r) -> str:
        return "" if r.known else (r.missing or "").replace(f"--space {sp.name}", f"--space {ref}")

    print(table([[_device(r), _range(r), note(r)] for r in ranges], ["device", "latency ms", "note"]))
    from nasprune.budgets import budget_advice, measured_range

    local = ranges[0]
    if not local.known and not args.no_latency:
        local = measured_range(net)
    data = "" if sp.dataset else " --dataset NAME"
    print()
    quick = f"nasprune prune --space {ref}{data} --budget-ms {{budget}} -o model.onnx" if sp.weights else None
    for line in budget_advice(
        local, f"nasprune search --space {ref}{data} --budget-ms {{budget}} -o model.onnx", quick
    ):
        print(line)
    return 0
