"""``nasprune lut build|validate|show|list|predict``: latency lookup tables per device."""

from __future__ import annotations

from pathlib import Path

from nasprune.errors import LatencyTableError


def register(sub) -> None:
    p = sub.add_parser(
        "lut",
        help="build, validate and inspect latency lookup tables",
        description=(
            "A latency table predicts a subnet's latency on one device from its config. Build it on the "
            "device itself (this machine is the built-in device 'local-cpu'); for other hardware run "
            "'nasprune lut build --device NAME' there, copy the JSON back and upload it to the service "
            "('nasprune devices upload NAME TABLE.json', or POST /v1/devices)."
        ),
    )
    s = p.add_subparsers(dest="lut_cmd", metavar="ACTION", required=True)

    b = s.add_parser(
        "build",
        help="measure a table on this machine",
        description=(
            "Time every op of the space in onnxruntime, fit the correction on exported subnets and measure "
            "the error on held-out ones. Writes <data dir>/latency_tables/<space>__<device>.json (or --output)."
        ),
    )
    _where(b, table=False)
    b.add_argument("--threads", type=int, default=1, help="intra-op threads (%(default)s; local-cpu: 1)")
    b.add_argument("--batch", type=int, default=1, help="batch size (%(default)s; local-cpu: 1)")
    b.add_argument(
        "--fit",
        type=int,
        default=20,
        help="subnets to fit the correction on (%(default)s; with 12 or more it also fits per-unit adjustments, "
        "docs/latency.md)",
    )
    b.add_argument("--validate", type=int, default=20, help="held-out subnets to measure the error (%(default)s)")
    b.add_argument("--op-rounds", type=int, help="rounds over all ops when timing them (default 40)")
    b.add_argument(
        "--flush-kb",
        type=_flush_kb,
        default=0,
        help="KiB of memory written before every timed unit call, so its weights come from beyond the core's "
        "private caches as inside a large network (default 0: off; 1024 on this 2 MiB-L2 CPU; docs/latency.md)",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--extend", action="store_true", help="only time the ops the existing table lacks (after a space change)"
    )
    b.add_argument("-o", "--output", type=Path, help="table file to write (default: the tables folder)")
    b.set_defaults(func=_build)

    v = s.add_parser(
        "validate",
        help="measure a table's error again on this machine",
        description="Export N random held-out subnets, time them and store the prediction error in the table.",
    )
    _where(v)
    v.add_argument("-n", type=int, default=50, help="held-out subnets (%(default)s)")
    v.add_argument("--seed", type=int, default=12345)
    v.set_defaults(func=_validate)

    sh = s.add_parser(
        "show",
        help="device, correction, error and latency range of a table",
        description=(
            "Show a table's device profile, fitted correction, measured error and the predicted latency of the "
            "fastest and slowest subnet: the range of budgets that make sense for a search."
        ),
    )
    _where(sh)
    sh.add_argument("--entries", action="store_true", help="also list every entry")
    sh.set_defaults(func=_show)

    ls = s.add_parser(
        "list",
        help="the tables in the data dir, with their latency ranges",
        description=(
            "One line per latency table in the data dir (built here, copied, or uploaded as a device): space, "
            "device, when it was built, its validated error and the predicted latency range of its subnets."
        ),
    )
    ls.add_argument("--data-dir", type=Path, help="data dir (default: $NASPRUNE_DATA_DIR or ./.nasprune)")
    ls.set_defaults(func=_list)

    pr = s.add_parser(
        "predict",
        help="predicted latency of one subnet, per unit",
        description="Predict one subnet's latency from a table, with each block's own share of it.",
    )
    _where(pr)
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help='subnet config: a JSON file or inline JSON {"depths":..,"widths":..}')
    which.add_argument("--largest", action="store_true")
    which.add_argument("--smallest", action="store_true")
    pr.set_defaults(func=_predict)


def _where(p, table: bool = True) -> None:
    p.add_argument("--space", help="space name or YAML path")
    p.add_argument("--device", default="local-cpu", help="device name (%(default)s)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="the fp32 table or the int8 one (units and subnets quantized; docs/int8.md)")  # fmt: skip
    if table:
        p.add_argument("--table", type=Path, help="table file (instead of --space/--device)")
    p.add_argument("--data-dir", type=Path, help="data dir (default: $NASPRUNE_DATA_DIR or ./.nasprune)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _table_file(args) -> Path:
    from nasprune.latency.store import table_path
    from nasprune.registry import load_space

    if getattr(args, "table", None) is not None:
        return args.table
    if not args.space:
        raise LatencyTableError("name the table: --space NAME [--device NAME], or --table FILE")
    return table_path(load_space(args.space).name, args.device, args.data_dir, args.precision)


def _load(args):
    from nasprune.latency.store import get_table
    from nasprune.latency.table import LatencyTable

    if args.table is not None:
        return LatencyTable.load(args.table), args.table
    if not args.space:
        raise LatencyTableError("name the table: --space NAME [--device NAME], or --table FILE")
    table = get_table(args.space, args.device, args.data_dir, build=False, precision=args.precision)
    return table, _table_file(args)


def _device(args):
    from nasprune.latency.device import LOCAL_CPU, DeviceProfile

    if args.device == LOCAL_CPU:
        if (args.threads, args.batch) != (1, 1):
            raise LatencyTableError(
                f"'{LOCAL_CPU}' is fixed at 1 thread and batch 1; name the device for other settings "
                f"(e.g. --device cpu-{args.threads}t-b{args.batch})"
            )
        return DeviceProfile.local()
    from pydantic import ValidationError

    try:
        return DeviceProfile.this_machine(args.device, args.threads, args.batch)
    except ValidationError:
        raise LatencyTableError(
            f"'{args.device}' is not a device name (letters, digits, '_', '.', '-'; at most 64)"
        ) from None


def _build(args) -> int:
    from nasprune.latency.profile import ProfileSettings, build_table, extend_table
    from nasprune.latency.table import LatencyTable
    from nasprune.registry import load_space

    if not args.space:
        raise LatencyTableError("--space is required to build a table")
    space = load_space(args.space)
    device = _device(args)
    path = args.output or _table_file(args)
    progress = not args.no_progress
    if args.extend:
        old = LatencyTable.load(path)
        table = extend_table(old, space, progress=progress)
        print(f"added {len(table) - len(old)} entries to {path}")
    else:
        settings = ProfileSettings(**({"op_rounds": args.op_rounds} if args.op_rounds else {}), flush_kb=args.flush_kb)
        print(f"building the latency table of '{space.name}' on {device.describe()}")
        table = build_table(
            space,
            device,
            n_fit=args.fit,
            n_validate=args.validate,
            settings=settings,
            seed=args.seed,
            progress=progress,
            precision=args.precision,
        )
    table.save(path)
    _summary(table)
    print(f"\nwrote {path}")
    return 0


def _validate(args) -> int:
    from nasprune.latency.validate import validate_table

    table, path = _load(args)
    report = validate_table(table, args.n, seed=args.seed, progress=not args.no_progress)
    table.with_error(report).save(path)
    print(f"{table.space.name} on {table.device.name}: {report.summary()}")
    print(f"stored in {path}")
    return 0


def _flush_kb(text: str) -> int:
    import argparse

    from nasprune.latency.settings import MAX_FLUSH_KB

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of KiB") from None
    if not 0 <= value <= MAX_FLUSH_KB:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_FLUSH_KB} KiB")
    return value


def _summary(table) -> None:
    from nasprune.cli._common import table as grid

    c = table.correction
    print(f"space      {table.space.name} (digest {table.space_digest})")
    print(f"device     {table.device.describe()}")
    print(f"           fingerprint {table.device_fingerprint}, cpu flags {' '.join(table.device.cpu_flags) or '-'}")
    print(f"built      {table.built_at} in {table.build_seconds:.0f} s; {len(table)} entries")
    load = table.build_load
    print(f"machine    {load.describe() if load is not None else 'load not recorded (a table built before it was)'}")
    cache = (
        f" + {c.cache_ms_per_mweight:.4g} ms per 1M weights above {c.cache_free_weights:,}"
        if c.cache_ms_per_mweight
        else ""
    )
    print(
        f"correction {c.intercept_ms:.4f} ms + {c.scale:.4f} x ops{cache} "
        f"(call cost {c.overhead_ms * 1000:.2f} us; fit on {c.fit_subnets} subnets)"
    )
    if c.key_ridge is not None:
        n = sum(1 for e in table.entries if e.adjust_ms)
        print(
            f"           + per-unit adjustments on {n} units (ridge {c.key_ridge:g}; leave-one-out APE "
            f"{c.key_loo_ape:.2f}% vs {c.base_loo_ape:.2f}% without)"
        )
    elif c.base_loo_ape is not None:
        print(f"           no per-unit adjustments: they did not beat {c.base_loo_ape:.2f}% leave-one-out APE")
    print(f"error      {table.error.summary() if table.error else 'not validated (nasprune lut validate)'}")
    if table.error is not None and table.error.coarse():
        from textwrap import wrap

        from nasprune.latency.table import COARSE_HINT

        print("\n".join(" " * 11 + line for line in wrap(COARSE_HINT, 96)))
    rows = [
        ["fastest", f"{table.min_latency():.4f}", table.min_config().key()],
        ["slowest", f"{table.max_latency():.4f}", table.max_config().key()],
    ]
    print()
    print(grid(rows, ["subnet", "predicted ms", "key"]))


def _show(args) -> int:
    from nasprune.cli._common import table as grid

    table, path = _load(args)
    print(f"table      {path}")
    _summary(table)
    if args.entries:
        rows = [
            [
                e.op.describe(),
                f"{e.median_ms * 1000:.2f}",
                f"{e.p90_ms * 1000:.2f}",
                f"{e.adjust_ms * 1000:+.2f}",
                e.count,
                f"{e.op.macs:,}",
            ]
            for e in sorted(table.entries, key=lambda e: e.op)
        ]
        print()
        print(grid(rows, ["op", "median us", "p90 us", "adjust us", "count", "MACs"]))
    return 0


def _list(args) -> int:
    import json

    from nasprune.cli._common import table as grid
    from nasprune.paths import devices_dir, tables_dir

    files = sorted(tables_dir(args.data_dir).glob("*.json")) + sorted(devices_dir(args.data_dir).glob("*/*.json"))
    from nasprune.errors import NasPruneError
    from nasprune.latency.table import LatencyTable

    rows = []
    for f in files:
        try:
            raw = json.loads(f.read_text())
            err = raw.get("error") or {}
            precision = raw.get("precision", "fp32")
            device = raw["device"]["name"] + ("" if precision == "fp32" else f" ({precision})")
            row = [raw["space"]["name"], device, raw["built_at"][:19],
                   f"{err['median_ape']:.1f}%" if err else "-"]  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            rows.append(["?", "?", "?", "unreadable", "-", str(f)])
            continue
        try:
            t = LatencyTable.load(f)
            span = f"{t.min_latency():.4g} .. {t.max_latency():.4g}"
        except (NasPruneError, ValueError):
            span = "unreadable"
        rows.append([*row, span, str(f)])
    if not rows:
        print("no latency tables yet (nasprune lut build --space NAME)")
        return 0
    print(grid(rows, ["space", "device", "built", "median APE", "latency ms", "file"]))
    return 0


def _predict(args) -> int:
    from nasprune.cli._common import read_config
    from nasprune.cli._common import table as grid

    table, _ = _load(args)
    space = table.space
    cfg = space.largest() if args.largest else space.smallest() if args.smallest else read_config(space, args.config)
    rows = [[block, key.describe(), f"{ms * 1000:.2f}"] for block, key, ms in table.breakdown(cfg)]
    print(grid(rows, ["block", "op", "own us"]))
    print(f"\npredicted {table.predict(cfg):.4f} ms on {table.device.name} (subnet {cfg.key()})")
    return 0
