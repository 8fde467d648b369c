"""Helpers shared by CLI commands: reading configs, printing tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nasprune.errors import ConfigError


def read_config(space, source: str):
    """A config from a JSON file path or an inline JSON object."""
    text = source
    if not source.lstrip().startswith("{"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file '{source}' does not exist (give a JSON file or an inline JSON object)")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config '{source}' is not valid JSON: {e}") from None
    return space.parse_config(data)


class _Retired(argparse.Action):
    def __init__(self, option_strings, dest, message: str = "", **kw):
        self.message = message
        super().__init__(option_strings, dest, nargs="?", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {self.message}")


def retired(parser: argparse.ArgumentParser, old: str, message: str) -> None:
    """An old spelling of a flag: given, the command stops with ``OLD MESSAGE`` (which names the new one)."""
    parser.add_argument(old, action=_Retired, message=message, dest=f"_retired{old.replace('-', '_')}",
                        help=argparse.SUPPRESS)  # fmt: skip


def table(rows: list[list[object]], header: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def front_table(candidates: list[dict], recommended_id: str | None, budget_ms: float | None = None) -> str:
    """The Pareto front as a table, from candidates as dicts (``Candidate.model_dump()`` or the API's JSON).

    Optional columns (standard error, test accuracy, precision) show only when some candidate has them.
    """

    def pct(v) -> str:
        return "" if v is None else f"{v:.2%}"

    def ms(v) -> str:
        return "" if v is None else f"{v:.4f}"

    has = {k: any(c.get(k) is not None for c in candidates) for k in ("accuracy_se", "test_accuracy", "precision")}
    header = ["", "candidate", "trial", "val acc"]
    header += ["+/- se"] * has["accuracy_se"] + ["test acc"] * has["test_accuracy"]
    header += ["pred ms", "measured ms", "params", "MACs"] + ["precision"] * has["precision"] + ["verified"]
    rows = []
    for c in candidates:
        latency = c["measured_latency_ms"] if c.get("measured_latency_ms") is not None else c["latency_ms"]
        mark = "*" if c["candidate_id"] == recommended_id else ""
        if budget_ms is not None and latency > budget_ms:
            mark += "!"
        trial = "tier 0" if c.get("tier") == 0 else c["trial_number"]  # pruned without training: no trial
        row = [mark, c["candidate_id"], trial, pct(c["accuracy"])]
        row += [pct(c.get("accuracy_se"))] * has["accuracy_se"] + [pct(c.get("test_accuracy"))] * has["test_accuracy"]
        row += [ms(c["latency_ms"]), ms(c.get("measured_latency_ms")), f"{c['params']:,}", f"{c['macs']:,}"]
        row += [c.get("precision") or ""] * has["precision"] + ["yes" if c.get("verified") else ""]
        rows.append(row)
    notes = "* recommended" + ("; ! over the budget" if any("!" in r[0] for r in rows) else "")
    return f"{table(rows, header)}\n({notes})"
