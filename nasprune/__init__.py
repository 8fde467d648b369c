"""nasprune: find the fastest, most accurate pruned subnetwork of a model for a latency budget.

The public Python API (imported lazily, so ``import nasprune`` stays cheap)::

    import torch, torchvision, nasprune
    model = torchvision.models.resnet18(num_classes=10)       # your trained model
    space = nasprune.derive_space(model, (3, 32, 32), model_ref="torchvision:resnet18",
                                  model_kwargs={"num_classes": 10}, dataset="my_data")
    supernet = nasprune.convert(model, space)                 # in place: same function, elastic layers
    small = nasprune.extract(supernet, space.smallest())      # a plain, physically smaller torch model
    nasprune.export_subnet(supernet, space.smallest(), "small.onnx")

    space.save("resnet18.yaml")                               # narrow it by hand if you like, then search:
    job = nasprune.SearchJob(space="resnet18.yaml", latency_budget_ms=1.5, n_trials=60)
    result = nasprune.run_job(job, nasprune.JobContext("my-job", "sqlite:///trials.db", output_dir="out"))

See docs/graph.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "derive_space": "nasprune.graph.api",
    "convert": "nasprune.graph.api",
    "analyze_model": "nasprune.graph.analyze",
    "GraphSupernet": "nasprune.graph.supernet",
    "extract": "nasprune.graph.supernet",
    "export_subnet": "nasprune.export",
    "load_space": "nasprune.registry",
    "create_supernet": "nasprune.registry",
    "GraphSpace": "nasprune.space",
    "SubnetConfig": "nasprune.space",
    "train_supernet": "nasprune.train",
    "SearchJob": "nasprune.search.job",
    "JobContext": "nasprune.search.job",
    "run_job": "nasprune.search.runner",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nasprune' has no attribute {name!r}")
