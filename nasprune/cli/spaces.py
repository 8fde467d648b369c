"""``nasprune spaces list|show``."""

from __future__ import annotations

from nasprune.cli._common import human, table


def register(sub) -> None:
    p = sub.add_parser(
        "spaces",
        help="list and inspect search spaces",
        description="List the registered search spaces or show one in detail.",
    )
    s = p.add_subparsers(dest="spaces_cmd", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="one line per registered space")
    ls.set_defaults(func=_list)
    show = s.add_parser("show", help="choices, size and min/max params and MACs of a space")
    show.add_argument("name", help="space name (see 'nasprune spaces list') or path to a YAML file")
    show.set_defaults(func=_show)


def _list(args) -> int:
    from nasprune.registry import create_supernet, list_spaces, load_space

    rows = []
    for name in list_spaces():
        sp = load_space(name)
        net = create_supernet(sp)
        rows.append(
            [
                name,
                sp.model,
                sp.dataset,
                "x".join(map(str, sp.input_shape)),
                f"{sp.size:,}",
                f"{human(net.num_params(sp.smallest()))}-{human(net.num_params(sp.largest()))}",
            ]
        )
    print(table(rows, ["space", "model", "dataset", "input", "subnets", "params"]))
    return 0


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
    return 0
