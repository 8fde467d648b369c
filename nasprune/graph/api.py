"""The two calls most users need: derive a space from a model, convert the model into its supernet."""

from __future__ import annotations

import re

from torch import nn

from nasprune.graph.analyze import analyze_model
from nasprune.graph.inputs import example_inputs
from nasprune.graph.supernet import DEFAULT_MAX_CHOICES, DEFAULT_MIN_FRACTION, GraphSupernet, space_from_analysis
from nasprune.space import GraphSpace


def derive_space(
    model: nn.Module,
    input_shape: tuple[int, ...],
    model_ref: str,
    name: str | None = None,
    model_kwargs: dict | None = None,
    dataset: str = "",
    channel_divisor: int = 8,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_choices: int = DEFAULT_MAX_CHOICES,
    input_kind: str = "tensor",
) -> GraphSpace:
    """The search space of ``model`` for inputs of ``input_shape`` (one sample, e.g. ``(3, 32, 32)``; for
    ``input_kind="tokens"``, ``(2, L)``: token ids and attention mask, :func:`nasprune.graph.inputs.example_inputs`).

    ``model_ref`` says how to build the model again (``torchvision:NAME`` or ``PKG.MODULE:FACTORY``,
    called with ``model_kwargs``); the space records it with the graph's digest. The number of
    classes is read from the model's output.
    """
    was = model.training
    analysis = analyze_model(model.eval(), example_inputs(tuple(input_shape), 1, input_kind), channel_divisor)
    model.train(was)
    name = name or default_space_name(model_ref)
    classes = analysis.output_shape[0] if analysis.output_shape else 2
    return space_from_analysis(
        analysis, name, model_ref, num_classes=max(classes, 2), dataset=dataset, model_kwargs=model_kwargs,
        channel_divisor=channel_divisor, min_fraction=min_fraction, max_choices=max_choices, input_kind=input_kind,
    )  # fmt: skip


_GENERIC_FACTORY = re.compile(r"(make|build|create|get|new|init)?_?(model|net|network)?")


def default_space_name(model_ref: str) -> str:
    """A space's name from its model reference: the factory's name (``cnn1d``), or the module's where the
    factory's says nothing (``mymodel:make_model`` -> ``mymodel``; ``torchvision:resnet18`` -> ``resnet18``)."""
    source, _, factory = model_ref.partition(":")
    name = factory.lower()
    if _GENERIC_FACTORY.fullmatch(name) and source != "torchvision":
        name = source.rpartition(".")[2].lower()
    name = re.sub(r"[^a-z0-9_]+", "_", name).strip("_")
    return name if re.fullmatch(r"[a-z][a-z0-9_]*", name) else f"model_{name}"


def convert(model: nn.Module, space: GraphSpace) -> GraphSupernet:
    """Convert ``model`` in place into the supernet of ``space`` (derived from this model's graph).

    The model's conv/linear/norm layers become elastic layers sharing its parameters; with no
    config selected (or the largest), it computes exactly what it computed before.
    """
    return GraphSupernet(space, model)
