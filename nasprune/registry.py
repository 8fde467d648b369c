"""The registry of search spaces: ``list_spaces``, ``load_space``, ``create_supernet``.

Spaces are the YAML files the package ships (``nasprune/search_spaces/``, package data), plus any
folder listed in ``NASPRUNE_SPACES_PATH`` (``os.pathsep``-separated). Adding a file adds a space everywhere,
tests included.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from nasprune.errors import SpaceError
from nasprune.graph.supernet import GraphSupernet
from nasprune.space import GraphSpace, parse_space

BUILTIN_DIR = Path(__file__).resolve().parent / "search_spaces"


def space_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("NASPRUNE_SPACES_PATH", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_DIR]


def _space_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in space_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
                found.setdefault(f.stem, f)
    return found


def list_spaces() -> list[str]:
    """Names of every registered space, sorted."""
    return sorted(_space_files())


def load_space_file(path: str | Path) -> GraphSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"search space file '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"search space file '{path}' must hold a mapping, not {type(data).__name__}")
    space = parse_space(data, source=f"'{path}'")
    if isinstance(space, GraphSpace) and space.weights is not None and not Path(space.weights).is_absolute():
        space = space.model_copy(update={"weights": str((path.parent / space.weights).resolve())})
    if space.name != path.stem and path.parent.resolve() in {d.resolve() for d in space_dirs()}:
        raise SpaceError(f"'{path}': name '{space.name}' must match the file name '{path.stem}'")
    return space


def load_space(name_or_path: str | Path) -> GraphSpace:
    """A space by registered name (``resnet_mnist``) or by path to a YAML file."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        return load_space_file(s)
    files = _space_files()
    if s not in files:
        raise SpaceError(f"unknown search space '{s}' (available: {', '.join(sorted(files)) or 'none'})")
    return load_space_file(files[s])


def create_supernet(space: GraphSpace | str, weights: str | Path | None = None) -> GraphSupernet:
    """The supernet of a space (given as a space or its name/path).

    Builds the model from the space's ``model`` reference, loads ``weights`` (a safetensors file; by
    default the space's own ``weights``, if any) and converts it in place: the largest subnet then
    computes what the model computes.
    """
    if not isinstance(space, GraphSpace):
        space = load_space(space)
    from nasprune.graph import GraphSupernet, build_model, load_weights

    model = build_model(space.model, space.model_kwargs)
    weights = weights if weights is not None else space.weights
    if weights is not None:
        load_weights(model, weights, space.weights_sha256 if weights == space.weights else None)
    return GraphSupernet(space, model)
