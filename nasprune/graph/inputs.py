"""The example inputs of a space's model: what analysis, conversion, latency units and export feed it.

A space's ``input_kind`` (:data:`nasprune.space.INPUT_KINDS`) says what its model reads: ``tensor``, one
float tensor of ``(batch, *input_shape)``; ``tokens``, one int64 tensor of ``(batch, 2, L)`` with the
token ids in row 0 and the attention mask in row 1 (``input_shape`` is ``(2, L)``), exactly as a text
dataset gives its samples (:mod:`nasprune.datasets.text`), so training, evaluation and the supernet call
the model as they call every other one. Only the ONNX file a user deploys takes the two apart
(``input_ids`` and ``attention_mask``: :func:`onnx_inputs`, :class:`PackedTokens`).
"""

from __future__ import annotations

import torch
from torch import nn

from nasprune.space import INPUT_KINDS, GraphSpace

TOKEN_IDS_BELOW = 100
"""Random token ids are drawn below this: every vocabulary has them (BERT's: special and unused tokens)."""


def example_inputs(
    space: GraphSpace | tuple[int, ...],
    batch: int = 1,
    kind: str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """The model's positional inputs for ``batch`` samples of ``space`` (or of an input shape and ``kind``).

    Without ``generator``: zeros (``tensor``) or token id 0 with a mask of ones (``tokens``). With it: random
    (normal floats; token ids below :data:`TOKEN_IDS_BELOW`, samples after the first padded in their last
    quarter, so that a check sees the mask at work)."""
    if isinstance(space, GraphSpace):
        shape, kind = tuple(space.input_shape), kind or space.input_kind
    else:
        shape, kind = tuple(space), kind or "tensor"
    full = (batch, *shape)
    if kind == "tensor":
        return (torch.zeros(full) if generator is None else torch.randn(full, generator=generator),)
    if kind != "tokens":
        raise ValueError(f"unknown input kind {kind!r} (one of {', '.join(INPUT_KINDS)})")
    if len(shape) != 2 or shape[0] != 2:
        raise ValueError(f"token inputs have the shape (2, L) (ids and attention mask), not {shape}")
    length = shape[1]
    x = torch.zeros(full, dtype=torch.long)
    x[:, 1] = 1
    if generator is not None:
        x[:, 0] = torch.randint(TOKEN_IDS_BELOW, (batch, length), generator=generator)
        x[1:, 1, length - length // 4 :] = 0
    return (x,)


def input_names(kind: str) -> list[str]:
    """The ONNX input names of a model of this kind."""
    return ["input_ids", "attention_mask"] if kind == "tokens" else ["input"]


def onnx_inputs(xs: tuple[torch.Tensor, ...], kind: str) -> tuple[torch.Tensor, ...]:
    """What the exported ONNX file takes for the model inputs ``xs``: token ids and mask apart, else as is."""
    return (xs[0][:, 0], xs[0][:, 1]) if kind == "tokens" else xs


class PackedTokens(nn.Module):
    """``model`` called with ``(input_ids, attention_mask)``: it stacks them into the ``(batch, 2, L)``
    tensor that ``model`` reads, so that an exported token model takes the two inputs a tokenizer gives."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(torch.stack((input_ids, attention_mask), dim=1))
