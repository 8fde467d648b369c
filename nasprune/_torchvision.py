"""Import torchvision's model builders on a CPU-only torch.

The torchvision 0.28.0 wheel on PyPI is linked against torch's CUDA libraries; next to the CPU build
of torch 2.13.0 its compiled ops (``nms``, ``roi_align``, ...) cannot load, and its import then
fails on an unguarded ``register_fake("torchvision::nms")``. nasprune uses only the model builders,
which are plain Python: when the compiled ops are missing, the schemas of ``nms``/``qnms`` are declared so the
import completes; detection ops stay unavailable (they raise if called), the models work.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_LIB = None
_UNGUARDED = ("nms", "qnms")  # the ops _meta_registrations registers without checking they exist


def import_torchvision() -> ModuleType:
    """``torchvision``, imported even where its compiled ops cannot load (see the module docstring)."""
    global _LIB
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if not any(f"torchvision::{op}" in str(e) for op in _UNGUARDED):
            raise
    import torch

    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")  # kept alive: the schema lives with it
        for op in _UNGUARDED:
            _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        if name not in ("torchvision.extension",):
            sys.modules.pop(name, None)
    return importlib.import_module("torchvision")
