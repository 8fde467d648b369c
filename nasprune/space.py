"""Search spaces and subnet configurations.

A search space (one YAML file under ``nasprune/search_spaces/``, or derived from a model by
``nasprune.derive_space``) names the model it prunes, a dataset, the input shape, and the choices:
per channel group the widths, per sequence of skippable residual blocks the depths. A
:class:`SubnetConfig` picks one depth per sequence and one width per *active* group (groups inside a
skipped block do not run); it describes one architecture, so two configs that differ only in groups
that their depth switches off are the same config.

Groups are named after the first layer that writes them (``stem_conv``, ``stages.0.0.conv2``);
sequences after their blocks (``stages.0.1-2``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cached_property
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from nasprune.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]

INPUT_KINDS = ("tensor", "tokens")
"""What a space's model reads (``GraphSpace.input_kind``): one float tensor of ``(batch, *input_shape)``, or
tokens: one int64 tensor of ``(batch, 2, L)`` (``input_ids`` and ``attention_mask`` stacked, as a text
dataset's samples are), ``input_shape`` being ``(2, L)``. :func:`nasprune.graph.inputs.example_inputs` makes them."""


def _choices(values: list[int], what: str) -> list[int]:
    if not values:
        raise ValueError(f"{what} needs at least one choice")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has duplicate choices: {values}")
    return sorted(values)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _product(choices: dict[str, tuple[int, ...]]) -> Iterator[dict[str, int]]:
    names = list(choices)
    idx = [0] * len(names)
    while True:
        yield {n: choices[n][i] for n, i in zip(names, idx, strict=True)}
        for k in reversed(range(len(names))):
            idx[k] += 1
            if idx[k] < len(choices[names[k]]):
                break
            idx[k] = 0
        else:
            return


class WidthGroup(_Strict):
    """A channel group of a graph-derived space: its width choices and, when all its layers live in
    one skippable block, that block (the group does not run when the block is skipped)."""

    widths: list[PositiveInt]
    within: str | None = None
    unit: Literal["channels", "heads"] = "channels"
    """What a width counts: channels, or the heads of an attention (not bound by ``channel_divisor``)."""

    @field_validator("widths")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        return _choices(v, "widths")

    @model_serializer(mode="wrap")
    def _omit_default_unit(self, handler):
        """Spaces without heads dump (and hash) as they did before ``unit`` existed."""
        data = handler(self)
        if data.get("unit") == "channels":
            del data["unit"]
        return data


class DepthSequence(_Strict):
    """Consecutive skippable residual blocks; a subnet keeps the first ``d`` of them."""

    blocks: Annotated[list[str], Field(min_length=1)]
    depths: list[Annotated[int, Field(ge=0)]]

    @field_validator("depths")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        return _choices(v, "depths")

    def model_post_init(self, _ctx) -> None:
        if max(self.depths) > len(self.blocks):
            raise ValueError(f"depths {self.depths} exceed the {len(self.blocks)} blocks of the sequence")


_NOT_LATENCY = frozenset({"description", "dataset", "weights", "weights_sha256"})
"""Space fields that change what a subnet computes or learns from, not what it runs: same ops, same time."""


class GraphSpace(_Strict):
    """A space derived from a model's graph (``nasprune.derive_space``): per channel group the widths,
    per sequence of skippable residual blocks the depths. ``model`` says how to build the model:
    ``torchvision:NAME`` or ``PKG.MODULE:FACTORY`` (local, trusted code), called with ``model_kwargs``.
    ``graph_digest`` is the hash of the traced graph: a model whose graph changed no longer fits."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    description: str = ""
    dataset: str = ""
    num_classes: Annotated[int, Field(ge=2)]
    channel_divisor: PositiveInt = 8
    """Every width must be a multiple of this (8 by default: other counts run slowly on CPUs)."""
    family: Literal["graph"]
    model: Annotated[str, Field(pattern=r"^([A-Za-z0-9_.]+:[A-Za-z0-9_]+|hf:[^\s]+)$")]
    model_kwargs: dict[str, int | float | str | bool] = {}
    input_shape: Annotated[tuple[PositiveInt, ...], Field(min_length=1, max_length=3)]
    input_kind: Literal["tensor", "tokens"] = "tensor"
    """``tokens``: the model reads int64 ``(batch, 2, L)`` token ids and attention masks (``input_shape``
    ``(2, L)``), a Hugging Face encoder's inputs (``INPUT_KINDS``); left out of the file when ``tensor``."""
    graph_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    groups: dict[str, WidthGroup]
    sequences: dict[str, DepthSequence] = {}
    weights: str | None = None
    """Trained weights the supernet starts from: a safetensors file (relative to the space file's folder)."""
    weights_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @model_serializer(mode="wrap")
    def _omit_default_input_kind(self, handler):
        """Spaces of float inputs dump (and hash) as they did before ``input_kind`` existed."""
        data = handler(self)
        if data.get("input_kind") == "tensor":
            del data["input_kind"]
        return data

    def digest(self) -> str:
        """A short hash of the space definition; checkpoints and tables record it. The weights count by
        their content (``weights_sha256``), not by where they lie."""
        return self._hash(frozenset({"weights"}))

    def model_post_init(self, _ctx) -> None:
        if not self.groups and not self.sequences:
            raise ValueError("a space needs at least one width group or depth sequence to choose from")
        if self.input_kind == "tokens" and (len(self.input_shape) != 2 or self.input_shape[0] != 2):
            raise ValueError(f"input_kind tokens takes input_shape (2, L) (token ids and attention mask), "
                             f"not {tuple(self.input_shape)}")  # fmt: skip
        if (self.weights is None) != (self.weights_sha256 is None):
            raise ValueError("weights and weights_sha256 go together (the file and the sha256 of its bytes)")
        # the largest width is the model's own channel count, which need not be a multiple
        self._check_divisible({name: tuple(g.widths[:-1]) for name, g in self.groups.items() if g.unit == "channels"})
        blocks = {b for seq in self.sequences.values() for b in seq.blocks}
        for name, g in self.groups.items():
            if g.within is not None and g.within not in blocks:
                raise ValueError(f"groups.{name}.within: '{g.within}' is not a block of any sequence")

    def save(self, path) -> None:
        """Write the space as a YAML space file (``load_space(path)`` reads it back)."""
        from pathlib import Path

        import yaml

        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    def width_layers(self) -> dict[str, tuple[int, ...]]:
        """Every width group of the largest subnet, in network order, with its allowed widths."""
        return {name: tuple(g.widths) for name, g in self.groups.items()}

    def depth_choices(self) -> dict[str, tuple[int, ...]]:
        """Per sequence of skippable blocks, the allowed depths."""
        return {name: tuple(seq.depths) for name, seq in self.sequences.items()}

    @property
    def stage_names(self) -> list[str]:
        return list(self.sequences)

    def skipped_blocks(self, depths: dict[str, int]) -> set[str]:
        """The blocks a subnet with ``depths`` does not run."""
        return {b for name, seq in self.sequences.items() for b in seq.blocks[depths[name] :]}

    def active_layers(self, depths: dict[str, int]) -> list[str]:
        """The width groups that run when the sequences have ``depths``."""
        skipped = self.skipped_blocks(depths)
        return [name for name, g in self.groups.items() if g.within not in skipped]

    def _check_divisible(self, widths: dict[str, tuple[int, ...]]) -> None:
        for layer, ws in widths.items():
            bad = [w for w in ws if w % self.channel_divisor]
            if bad:
                raise ValueError(
                    f"{layer}: widths {bad} are not multiples of channel_divisor={self.channel_divisor} "
                    "(round them, or set channel_divisor: 1 in the space file)"
                )

    # -- configs -----------------------------------------------------------------------------------
    def config(self, depths: dict[str, int], widths: dict[str, int]) -> SubnetConfig:
        """Validate a config against this space; widths of layers that the depths switch off are dropped.

        Raises :class:`ConfigError` naming the offending field and the allowed values.
        """
        problems: list[str] = []
        choices = self.depth_choices()
        unknown = sorted(set(depths) - set(choices))
        if unknown:
            problems.append(f"depths.{unknown[0]}: no such stage (stages: {', '.join(choices)})")
        for stage, allowed in choices.items():
            if stage not in depths:
                problems.append(f"depths.{stage}: missing (allowed: {list(allowed)})")
            elif not _is_int(depths[stage]) or depths[stage] not in allowed:
                problems.append(f"depths.{stage}: {depths[stage]!r} is not allowed (allowed: {list(allowed)})")
        if problems:
            raise ConfigError(f"invalid config for space '{self.name}': " + "; ".join(problems))
        all_layers = self.width_layers()
        unknown = sorted(set(widths) - set(all_layers))
        if unknown:
            problems.append(f"widths.{unknown[0]}: no such layer in space '{self.name}'")
        active = self.active_layers(depths)
        for layer in active:
            allowed = all_layers[layer]
            if layer not in widths:
                problems.append(f"widths.{layer}: missing (allowed: {list(allowed)})")
            elif not _is_int(widths[layer]) or widths[layer] not in allowed:
                problems.append(f"widths.{layer}: {widths[layer]!r} is not allowed (allowed: {list(allowed)})")
        for layer in set(widths) & set(all_layers) - set(active):
            if widths[layer] not in all_layers[layer]:
                problems.append(
                    f"widths.{layer}: {widths[layer]!r} is not allowed (allowed: {list(all_layers[layer])})"
                )
        if problems:
            raise ConfigError(f"invalid config for space '{self.name}': " + "; ".join(problems))
        return SubnetConfig(
            space=self.name,
            depths={s: int(depths[s]) for s in choices},
            widths={layer: int(widths[layer]) for layer in active},
        )

    def parse_config(self, data: object) -> SubnetConfig:
        """Validate a config given as a mapping (e.g. loaded from JSON)."""
        if isinstance(data, SubnetConfig):
            data = data.model_dump()
        if not isinstance(data, dict):
            raise ConfigError(f"a config is a mapping with 'depths' and 'widths', got {type(data).__name__}")
        extra = sorted(set(data) - {"space", "depths", "widths"})
        if extra:
            raise ConfigError(f"{extra[0]}: unknown config field (allowed: space, depths, widths)")
        if data.get("space", self.name) != self.name:
            raise ConfigError(f"space: config is for space '{data['space']}', not '{self.name}'")
        for part in ("depths", "widths"):
            if not isinstance(data.get(part), dict):
                raise ConfigError(f"{part}: expected a mapping of name -> integer")
        return self.config(data["depths"], data["widths"])

    def largest(self) -> SubnetConfig:
        return self._extreme(max)

    def smallest(self) -> SubnetConfig:
        return self._extreme(min)

    def _extreme(self, pick) -> SubnetConfig:
        depths = {s: pick(c) for s, c in self.depth_choices().items()}
        widths = {layer: pick(c) for layer, c in self.width_layers().items()}
        return self.config(depths, widths)

    def uniform(self, fraction: float) -> SubnetConfig:
        """Max depth and, in every layer, the smallest allowed width >= ``fraction`` of its max width.

        The classic "width multiplier" baseline.
        """
        depths = {s: max(c) for s, c in self.depth_choices().items()}
        widths = {}
        for layer, c in self.width_layers().items():
            target = fraction * max(c)
            widths[layer] = next((w for w in c if w >= target - 1e-9), max(c))
        return self.config(depths, widths)

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A uniformly random config: each depth and each active width drawn uniformly from its choices."""
        depths = {s: int(rng.choice(c)) for s, c in self.depth_choices().items()}
        layers = self.width_layers()
        widths = {layer: int(rng.choice(layers[layer])) for layer in self.active_layers(depths)}
        return self.config(depths, widths)

    def sample_at(self, rng: np.random.Generator, level: float) -> SubnetConfig:
        """A random config around ``level`` (0: the smallest, 1: the largest): each depth and active
        width is the ``Binomial(n - 1, level)``-th of its ``n`` sorted choices. With ``level`` drawn
        uniformly, subnets of every size come up about equally often, where :meth:`sample` puts nearly
        all of them in the middle of the space."""

        def pick(choices) -> int:
            ordered = sorted(choices)
            return int(ordered[rng.binomial(len(ordered) - 1, level)])

        depths = {s: pick(c) for s, c in self.depth_choices().items()}
        layers = self.width_layers()
        return self.config(depths, {layer: pick(layers[layer]) for layer in self.active_layers(depths)})

    @cached_property
    def size(self) -> int:
        """Number of distinct subnets (architectures) in the space."""
        layers = self.width_layers()
        total = 0
        for depth_combo in _product(self.depth_choices()):
            n = 1
            for layer in self.active_layers(depth_combo):
                n *= len(layers[layer])
            total += n
        return total

    def _hash(self, exclude: frozenset[str] = frozenset()) -> str:
        blob = json.dumps(self.model_dump(mode="json", exclude=set(exclude)), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def latency_digest(self) -> str:
        """A short hash of what sets the subnets' latency (architecture, widths, depths, input): the digest
        without the description, the dataset and the trained weights. A latency table built for a space
        serves every space with the same latency digest (new weights need no new table)."""
        return self._hash(_NOT_LATENCY)


_RETIRED_FAMILIES = {
    "resnet": ("resnet_mnist", "1,28,28"),
    "mlp": ("mlp_digits", "64"),
}


def parse_space(data: object, source: str = "<data>") -> GraphSpace:
    """Validate a space from a mapping. Raises :class:`~nasprune.errors.SpaceError` naming the field.

    A space in the schema of the retired hand-written families (``family: resnet`` / ``mlp`` with
    ``stages``) gets a message saying how to derive the equivalent space from a model.
    """
    from nasprune.errors import SpaceError

    family = data.get("family") if isinstance(data, dict) else None
    if family in _RETIRED_FAMILIES:
        builtin, shape = _RETIRED_FAMILIES[family]
        raise SpaceError(
            f"invalid search space {source}: 'family: {family}' (with 'stages') is the schema of the hand-written "
            "families, retired in nasprune 0.2: spaces are now derived from a model's graph ('family: graph'). "
            f"Derive one with `nasprune model inspect --model PKG.MODULE:FACTORY --input-shape ... --save FILE.yaml` "
            f"(the built-in model of this family: --model nasprune.models.{builtin}:{builtin} --input-shape {shape}), "
            "then narrow the widths of its 'groups' and the depths of its 'sequences' by hand"
        )
    if isinstance(data, dict) and "family" not in data:
        raise SpaceError(f"invalid search space {source}: family: missing (the only schema is 'family: graph')")
    try:
        return GraphSpace.model_validate(data)
    except ValidationError as e:
        raise SpaceError(f"invalid search space {source}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; unknown fields are not ignored)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class SubnetConfig(BaseModel):
    """One architecture of a space: a depth per stage and a width per active width layer.

    Build it through ``space.config(...)``/``space.parse_config(...)``, which validate it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str
    depths: dict[str, int]
    widths: dict[str, int]

    def key(self) -> str:
        """A stable 16-hex-digit hash of the architecture (same config, same key, any process)."""
        blob = json.dumps({"space": self.space, "depths": self.depths, "widths": self.widths}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubnetConfig) and self.key() == other.key()
