"""Where nasprune keeps what it builds once and reuses: checkpoints, latency tables, studies.

``NASPRUNE_DATA_DIR`` sets the root (default ``./.nasprune`` in the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(override: str | Path | None = None) -> Path:
    root = Path(override or os.environ.get("NASPRUNE_DATA_DIR", ".nasprune")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def checkpoints_dir(override: str | Path | None = None) -> Path:
    d = data_dir(override) / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    return d


def tables_dir(override: str | Path | None = None) -> Path:
    d = data_dir(override) / "latency_tables"
    d.mkdir(parents=True, exist_ok=True)
    return d


def models_dir(override: str | Path | None = None) -> Path:
    """Uploaded models: ``<id>.yaml`` (the derived space) and ``<id>.safetensors`` (its weights)."""
    d = data_dir(override) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d
