"""``nasprune train``: weight-sharing supernet training."""

from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a supernet once (sandwich rule + in-place distillation)",
        description=(
            "Train the supernet of a space with weight sharing: each step trains the largest subnet on "
            "labels and the smallest plus N random subnets on the largest one's soft outputs. Without "
            "--output the checkpoint goes to the data dir, where searches find it. The training state is "
            "saved atomically after every epoch next to the checkpoint (CHECKPOINT.resume): a training "
            "that was stopped or killed continues from its last epoch when run again with the same "
            "settings. --workers N trains data-parallel on Ray Train (the same checkpoint format)."
        ),
    )
    p.add_argument("--space", required=True, help="space name or YAML path")
    p.add_argument("--epochs", type=int, help="epochs (default: the space's recipe)")
    p.add_argument("--warmup-epochs", type=int, help="largest-only epochs before importance ordering")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--n-random", type=int, help="random subnets per step besides largest and smallest")
    p.add_argument("--seed", type=int)
    p.add_argument("-o", "--output", type=Path, help="checkpoint path (default: the data dir's cache)")
    p.add_argument("--data-dir", type=Path, help="data dir (default: $NASPRUNE_DATA_DIR or ./.nasprune)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI to log the run to (default: none)")
    p.add_argument(
        "--torch-device",
        default="cpu",
        metavar="cpu|cuda|cuda:N|auto",
        help="where torch trains: cpu, cuda (mixed precision) or auto (CUDA when this machine has it); default: cpu",
    )
    from nasprune.cli._common import retired

    retired(p, "--device", "is now --torch-device (cpu, cuda or auto): --device names the latency table's device "
                           "in search, submit, prune and lut")  # fmt: skip
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-parallel workers on Ray Train (default 1: train in this process); each needs a CPU (or a GPU "
        "with --torch-device cuda)",
    )
    p.add_argument(
        "--ray-address",
        help="Ray cluster to train on with --workers (default: $NASPRUNE_RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="with --workers: how many worker failures the run survives (each restarts from the last epoch)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="ignore a saved training state and train from the first epoch",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from nasprune.cli._common import table
    from nasprune.data import load_dataset
    from nasprune.errors import ConfigError
    from nasprune.evaluate import Evaluator
    from nasprune.registry import load_space
    from nasprune.train import default_recipe, supernet_path, train_supernet

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.torch_device not in ("cpu", "cuda", "auto") and not args.torch_device.startswith("cuda:"):
        raise ConfigError(f"--torch-device must be cpu, cuda, cuda:N or auto, got '{args.torch_device}'")
    space = load_space(args.space)
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "warmup_epochs", "batch_size", "lr", "n_random", "seed")
        if getattr(args, k) is not None
    }
    recipe = default_recipe(space).model_copy(update=overrides)
    recipe = type(recipe).model_validate(recipe.model_dump())
    tracker = None
    if args.tracking_uri:
        from nasprune.tracking import MlflowTracker

        tracker = MlflowTracker(args.tracking_uri)
    out = args.output or supernet_path(space, args.data_dir)
    ray_address = args.ray_address or os.environ.get("NASPRUNE_RAY_ADDRESS")
    res = train_supernet(
        space,
        recipe,
        load_dataset(space.dataset, data_dir=args.data_dir),
        tracker=tracker,
        checkpoint=out,
        device=args.torch_device,
        resume=not args.restart,
        notify=lambda msg: print(msg, flush=True),
        workers=args.workers,
        ray_address=ray_address,
        max_failures=args.max_failures,
    )
    ds = load_dataset(space.dataset, data_dir=args.data_dir)
    ev = Evaluator(res.supernet, ds)
    rows = [
        [label, f"{ev.accuracy(cfg, 'val'):.2%}", f"{ev.accuracy(cfg, 'test'):.2%}"]
        for label, cfg in (("largest", space.largest()), ("smallest", space.smallest()))
    ]
    print(table(rows, ["subnet", "val acc", "test acc"]))
    where = f", {args.workers} Ray Train workers" if args.workers > 1 else ""
    print(f"checkpoint: {res.checkpoint} ({res.seconds:.0f} s{where})")
    if tracker and tracker.error:
        print(f"warning: {tracker.error}")
    return 0
