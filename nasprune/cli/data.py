"""``nasprune data add|list|show``: the dataset registry from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from nasprune.cli._common import human, table
from nasprune.datasets.record import BUILTINS
from nasprune.errors import DatasetError

FORMAT_HELP = (
    "npz: arrays x and y (or x_train/y_train, x_val/y_val, x_test/y_test for your own split), optional "
    "class_names; images: a zip or tar of CLASS_NAME/*.png|jpg (needs --size); csv, parquet: a label column "
    "and numeric features; npy: a folder or tar with x.npy and y.npy (optional split.npy: 0 train, 1 val, "
    "2 test), memory-mapped and streamed. Default: guessed from the file name."
)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of sizes (e.g. 28,28)") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': sizes must be positive")
    return dims


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="add, list and inspect datasets",
        description=(
            f"Datasets by name: the built-ins ({', '.join(BUILTINS)}) and your own, "
            "added from files into the data dir (NASPRUNE_DATA_DIR, default ./.nasprune). A space names its dataset; a "
            "job may name another one that fits the model ('dataset')."
        ),
    )
    s = p.add_subparsers(dest="data_cmd", metavar="ACTION", required=True)
    add = s.add_parser(
        "add",
        help="validate a file and add it as a dataset",
        description=(
            "Read PATH, validate it (shapes, labels, class sizes for the split, NaN/inf, corrupt images, unsafe "
            "archive paths), compute normalisation statistics on its train split and store it, content "
            "addressed, under NAME. Nothing is written when a check fails. " + FORMAT_HELP
        ),
    )
    add.add_argument("name", help="lowercase letters, digits and '_', starting with a letter")
    add.add_argument("path", type=Path, help="the file (or, for npy, a folder)")
    add.add_argument("--format", choices=["npz", "images", "csv", "parquet", "npy"], help=FORMAT_HELP)
    add.add_argument("--size", type=_shape, metavar="H,W", help="images: resize and centre-crop to this size")
    add.add_argument("--mode", choices=["L", "RGB"], default="L", help="images: grayscale (L, default) or RGB")
    add.add_argument("--label-column", default="label", help="csv/parquet: the label column (default: label)")
    add.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="reshape each sample (e.g. 1,28,28)")
    add.add_argument("--val", type=float, default=0.1, help="fraction for validation (stratified split; 0.1)")
    add.add_argument("--test", type=float, default=0.2, help="fraction for test (stratified split; 0.2)")
    add.add_argument("--calib", type=int, default=500, help="train samples for BatchNorm recalibration (500)")
    add.add_argument("--seed", type=int, default=0, help="seed of the stratified split (0)")
    add.add_argument("--space", help="also check that the data fits this space's model (input shape, classes)")
    add.add_argument("--data-dir", type=Path, help="data dir (default: NASPRUNE_DATA_DIR or ./.nasprune)")
    _service(add, "upload the file to this service (POST /v1/datasets; checked there the same way) instead of "
                  "adding it to the local data dir")  # fmt: skip
    add.set_defaults(func=_add)
    ls = s.add_parser(
        "list",
        help="one line per dataset (built-in and added)",
        description="List the built-in datasets and those added to the data dir, one line each.",
    )
    ls.add_argument("--data-dir", type=Path, help="data dir (default: NASPRUNE_DATA_DIR or ./.nasprune)")
    _service(ls, "list the datasets of this service (GET /v1/datasets) instead of the local data dir")
    ls.set_defaults(func=_list)
    show = s.add_parser(
        "show",
        help="sizes per split, class balance, shapes, normalisation; a PNG grid of samples for images",
        description="Describe one dataset. For image datasets a grid of samples per class is written as PNG.",
    )
    show.add_argument("name")
    show.add_argument("--grid", type=Path, help="where to write the sample grid (images; default NAME_samples.png)")
    show.add_argument("--data-dir", type=Path, help="data dir (default: NASPRUNE_DATA_DIR or ./.nasprune)")
    _service(show, "show this service's record of the dataset (GET /v1/datasets/NAME; no sample grid)")
    show.set_defaults(func=_show)


def _service(p, what: str) -> None:
    p.add_argument("--url", help=what)
    p.add_argument("--token", help="API key or token (default $NASPRUNE_API_KEY or $NASPRUNE_API_TOKEN)")


def _upload(args) -> int:
    """``data add --url``: the same file and options, checked by the service."""
    from nasprune.cli.jobs import _cli_errors
    from nasprune.client import Client
    from nasprune.datasets.formats import guess_format

    if args.data_dir is not None:
        raise DatasetError("--data-dir is the local data dir: with --url the dataset goes to the service")
    options = {"mode": args.mode, "label_column": args.label_column, "val": args.val, "test": args.test,
               "calib": args.calib, "seed": args.seed}  # fmt: skip
    if args.size is not None:
        options["size"] = ",".join(map(str, args.size))
    if args.input_shape is not None:
        options["input_shape"] = ",".join(map(str, args.input_shape))
    if args.space:
        options["space"] = args.space
    if not args.path.is_file():
        raise DatasetError(f"'{args.path}' is not a file (to upload an npy folder, tar its x.npy and y.npy)")

    @_cli_errors
    def run(args) -> int:
        with Client(args.url, args.token) as c:
            info = c.upload_dataset(args.name, args.path, args.format or guess_format(args.path), **options)
        total = sum(info["sizes"][s] for s in ("train", "val", "test"))
        print(f"uploaded dataset '{info['name']}' ({info['source']}) to {c.base_url}: {total:,} samples of shape "
              f"{tuple(info['input_shape'])}, {info['num_classes']} classes")  # fmt: skip
        return 0

    return run(args)


def _add(args) -> int:
    from pydantic import ValidationError

    if args.url:
        return _upload(args)

    from nasprune.datasets import DatasetStore, ReadOptions, SplitPolicy
    from nasprune.space import format_validation_error

    space = None
    if args.space:
        from nasprune.registry import load_space

        space = load_space(args.space)
    if args.size is not None and len(args.size) != 2:
        raise DatasetError(f"--size takes two sizes, H,W (got {','.join(map(str, args.size))})")
    try:
        policy = SplitPolicy(val=args.val, test=args.test, calib=args.calib, seed=args.seed)
    except ValidationError as e:
        raise DatasetError(f"split policy: {format_validation_error(e)}") from None
    options = ReadOptions(size=args.size, mode=args.mode, label_column=args.label_column, input_shape=args.input_shape)
    info = DatasetStore.at(args.data_dir).add(args.name, args.path, args.format, options, policy, space)
    print(f"added dataset '{info.name}' ({info.source}): {sum(info.sizes[s] for s in ('train', 'val', 'test')):,} "
          f"samples of shape {tuple(info.input_shape)}, {info.num_classes} classes, hash {info.short_hash}"
          f"{', streamed from disk' if info.streamed else ''}")  # fmt: skip
    return 0


def _list(args) -> int:
    if args.url:
        return _list_service(args)
    import math

    from nasprune.datasets import DatasetStore

    rows = []
    for n, b in BUILTINS.items():
        shape, k, total = b.input_shape, b.num_classes, b.samples
        size = human(total * math.prod(shape) * b.item_bytes) + "B"  # in memory once loaded, as a user dataset's
        rows.append([n, "builtin", "x".join(map(str, shape)), k, f"{total:,}", size])
    for info in DatasetStore.at(args.data_dir).list():
        total = sum(info.sizes[s] for s in ("train", "val", "test"))
        rows.append([info.name, info.source, "x".join(map(str, info.input_shape)), info.num_classes,
                     f"{total:,}", human(info.n_bytes) + "B"])  # fmt: skip
    print(table(rows, ["dataset", "source", "input", "classes", "samples", "size"]))
    return 0


def _list_service(args) -> int:
    from nasprune.cli.jobs import _cli_errors
    from nasprune.client import Client

    @_cli_errors
    def run(args) -> int:
        with Client(args.url, args.token) as c:
            items = c.datasets()
        rows = [
            [d["name"], d["source"], "x".join(map(str, d["input_shape"])), d["num_classes"],
             f"{d['samples']:,}" if d.get("samples") is not None else "",
             human(d["n_bytes"]) + "B" if d.get("n_bytes") else ""]
            for d in items
        ]  # fmt: skip
        print(table(rows, ["dataset", "source", "input", "classes", "samples", "size"]))
        return 0

    return run(args)


def _show(args) -> int:
    from nasprune.data import dataset_info, load_dataset

    if args.url:
        return _show_service(args)
    info = dataset_info(args.name, args.data_dir)
    _describe(info)
    if info.layout == "image":
        path = args.grid or Path(f"{info.name}_samples.png")
        sample_grid(load_dataset(args.name, data_dir=args.data_dir), path)
        print(f"\nsample grid: {path}")
    return 0


def _show_service(args) -> int:
    from nasprune.cli.jobs import _cli_errors
    from nasprune.client import Client
    from nasprune.datasets.record import DatasetInfo

    @_cli_errors
    def run(args) -> int:
        with Client(args.url, args.token) as c:
            _describe(DatasetInfo.model_validate(c.dataset(args.name)))
        return 0

    return run(args)


def _describe(info) -> None:
    print(f"{info.name}: {info.task}, {info.source}{' (built-in)' if info.builtin else ''}, hash {info.short_hash}")
    print(f"input {tuple(info.input_shape)} ({info.layout}), {info.num_classes} classes, {human(info.n_bytes)}B"
          f"{', streamed from disk for training' if info.streamed else ''}")  # fmt: skip
    sp = info.split
    how = "your own split" if sp.kind == "given" else f"stratified, val {sp.val:g}, test {sp.test:g}, seed {sp.seed}"
    print(f"split: {how}; " + ", ".join(f"{k} {v:,}" for k, v in info.sizes.items()))
    n = info.normalization
    short = lambda v: ", ".join(f"{x:.4g}" for x in v[:4]) + (", ..." if len(v) > 4 else "")  # noqa: E731
    print(f"normalisation ({n.axis}, on train): mean [{short(n.mean)}], std [{short(n.std)}]")
    print()
    rows = [[c, *(info.class_counts[s][i] for s in ("train", "val", "test"))] for i, c in enumerate(info.class_names)]
    print(table(rows, ["class", "train", "val", "test"]))


def sample_grid(ds, path: Path, per_class: int = 8, max_classes: int = 10, cell: int = 48) -> Path:
    """A PNG with one row of validation samples per class (raw scale restored, min-max scaled over the grid)."""
    import numpy as np
    from PIL import Image, ImageDraw

    info = ds.info
    x, y = ds.tensors("val")
    mean, std = info.normalization.arrays(tuple(info.input_shape))
    raw = x.numpy() * std + mean
    lo, hi = float(raw.min()), float(raw.max())
    classes = list(range(min(info.num_classes, max_classes)))
    label_w = 80
    grid = Image.new("RGB", (label_w + per_class * cell, len(classes) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for row, c in enumerate(classes):
        draw.text((4, row * cell + cell // 2 - 6), info.class_names[c][:12], fill="black")
        for col, i in enumerate(np.nonzero(y.numpy() == c)[0][:per_class]):
            img = ((raw[i] - lo) / (hi - lo + 1e-12) * 255).astype(np.uint8)
            pic = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)[..., :3])
            grid.paste(pic.convert("RGB").resize((cell - 2, cell - 2), Image.Resampling.NEAREST),
                       (label_w + col * cell + 1, row * cell + 1))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, "PNG")
    return path
