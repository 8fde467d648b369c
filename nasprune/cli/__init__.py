"""The ``nasprune`` command line. Each command group lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from nasprune.errors import NasPruneError
from nasprune.space import format_validation_error

_GROUPS = ["spaces", "data", "model", "export", "train", "search", "demo", "serve", "jobs", "lut", "worker"]
_GROUPS.append("dashboard")  # optuna-dashboard on a job's trials
_GROUPS.append("prune")  # tier 0: a model under the budget in minutes, without training
_GROUPS.append("users")  # `users` and `keys`: accounts of a service shared by a team (NASPRUNE_AUTH=users)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="nasprune",
        description=(
            "Find the fastest, most accurate pruned subnetwork of a model for a latency budget. "
            "A search space (YAML) defines a supernet; every subnet is a physical pruning of it."
        ),
        epilog="Run 'nasprune COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _GROUPS:
        importlib.import_module(f"nasprune.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    if not sys.stderr.isatty():  # a log file: any tqdm bar (training, table builds) updates every 10 s at most
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NasPruneError as e:
        print(f"nasprune: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"nasprune: error: {format_validation_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
