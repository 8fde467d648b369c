"""``nasprune model inspect``: what the graph analysis finds in a model (local, trusted code)."""

from __future__ import annotations

from nasprune.cli._common import human, table
from nasprune.errors import GraphError


def register(sub) -> None:
    p = sub.add_parser(
        "model",
        help="analyse your own model: channel groups, skippable blocks, frozen layers",
        description=(
            "Derive a search space from a PyTorch model's graph (torch.fx). The model is named by a "
            "reference: 'torchvision:NAME' (built with weights=None, nothing is downloaded) or "
            "'PKG.MODULE:FACTORY' (your own importable code; it runs here)."
        ),
    )
    s = p.add_subparsers(dest="model_cmd", metavar="ACTION", required=True)
    ins = s.add_parser(
        "inspect",
        help="print the groups, frozen layers and why, width/depth choices, min/max params and MACs",
        description=(
            "Trace the model with an example input, list the channel groups (channels pruned together), "
            "the sequences of skippable residual blocks, everything frozen at full width with the reason, "
            "and the smallest/largest subnet's params and MACs. --save writes the derived space as YAML "
            "(narrow its choices by hand, then use it as a space file)."
        ),
    )
    ins.add_argument("--model", required=True, metavar="REF", help="torchvision:NAME or PKG.MODULE:FACTORY")
    ins.add_argument("--input-shape", required=True, metavar="C,H,W", help="one sample's shape, e.g. 3,32,32 or 1,40")
    ins.add_argument("--num-classes", type=int, default=None, help="passed to the factory as num_classes")
    ins.add_argument("--weights", metavar="FILE.safetensors", help="trained weights to load (checked tensor by tensor)")
    ins.add_argument("--name", default=None, help="name of the derived space (default: from the model)")
    ins.add_argument("--divisor", type=int, default=8, help="widths are multiples of this (default 8)")
    ins.add_argument("--min-fraction", type=float, default=0.25, help="narrowest width as a fraction (default 0.25)")
    ins.add_argument("--max-choices", type=int, default=8, help="at most this many widths per group (default 8)")
    ins.add_argument("--save", metavar="SPACE.yaml", help="write the derived space to this YAML file")
    ins.set_defaults(func=_inspect)


def parse_shape(text: str) -> tuple[int, ...]:
    import re

    try:
        shape = tuple(int(v) for v in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise GraphError(f"--input-shape '{text}' is not a list of integers like 3,32,32") from None
    if not 1 <= len(shape) <= 3 or any(v <= 0 for v in shape):
        raise GraphError(f"--input-shape '{text}': give 1 to 3 positive sizes (C or C,L or C,H,W)")
    return shape


def _inspect(args) -> int:
    import re

    import torch

    from nasprune.graph import GraphSupernet, analyze_model, build_model, derive_space, fixed_groups, load_weights
    from nasprune.graph.units import UnitPlan

    shape = parse_shape(args.input_shape)
    if not 0 < args.min_fraction <= 1:
        raise GraphError(f"--min-fraction {args.min_fraction} must be in (0, 1]")
    if args.max_choices < 2 or args.divisor < 1:
        raise GraphError("--max-choices must be at least 2 and --divisor at least 1")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = build_model(args.model, kwargs)
    if args.weights:
        load_weights(model, args.weights)
    model.eval()
    x = torch.zeros(1, *shape)
    analysis = analyze_model(model, x, args.divisor)
    classes = analysis.output_shape[0] if analysis.output_shape else 0
    name = args.name or re.sub(r"[^a-z0-9_]+", "_", args.model.rpartition(":")[2].lower())
    space = derive_space(
        analysis, name, args.model, num_classes=max(classes, 2), model_kwargs=kwargs,
        channel_divisor=args.divisor, min_fraction=args.min_fraction, max_choices=args.max_choices,
    )  # fmt: skip
    plan = UnitPlan(analysis, [b for seq in space.sequences.values() for b in seq.blocks])  # before conversion
    net = GraphSupernet(space, model)
    print(f"{args.model}: input {shape}, output {analysis.output_shape}, graph digest {analysis.digest}")
    print(f"{len(space.groups)} channel groups, {len(space.sequences)} depth sequences, {space.size:.3g} subnets")
    print()
    rows = [[g, analysis.group_size[g], ", ".join(map(str, w.widths)), w.within or ""] for g, w in space.groups.items()]
    print(table(rows, ["group (first layer writing it)", "channels", "widths", "inside block"]))
    if space.sequences:
        print()
        rows = [[s, ", ".join(seq.blocks), ", ".join(map(str, seq.depths))] for s, seq in space.sequences.items()]
        print(table(rows, ["depth sequence", "skippable blocks", "depths"]))
    fixed = fixed_groups(analysis, space)
    print()
    if fixed:
        print(table([[g, why] for g, why in fixed.items()], ["kept at full width", "why"]))
    if analysis.frozen:
        print()
        rows = [[f.node, f.op, f.reason] for f in analysis.frozen]
        print(table(rows, ["frozen node", "op", "reason"]))
    else:
        print("frozen: nothing (every op of the graph was understood)")
    print()
    rows = []
    for label, cfg in (("smallest", space.smallest()), ("largest", space.largest())):
        rows.append([label, f"{net.num_params(cfg):,}", f"{net.macs(cfg):,} ({human(net.macs(cfg))})"])
    print(table(rows, ["subnet", "params", "MACs"]))
    exported = plan.exported
    print(f"\nlatency units: {len(plan.units)} (what onnxruntime runs, after its fusions)")
    if exported:
        shown = "; ".join(f"{unit} ({ops})" for unit, ops in list(exported.items())[:8])
        more = f"; and {len(exported) - 8} more" if len(exported) > 8 else ""
        print(f"  {len(exported)} hold ops without a hand-written unit, timed as torch exports them: {shown}{more}")
    print("predicted latency: build the space's latency table ('nasprune lut build --space FILE.yaml' after --save)")
    if args.save:
        space.save(args.save)
        print(f"\nspace written to {args.save}")
    return 0
