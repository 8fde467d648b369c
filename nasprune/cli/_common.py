"""Helpers shared by CLI commands: reading configs, printing tables."""

from __future__ import annotations

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
