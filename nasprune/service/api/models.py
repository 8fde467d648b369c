"""Uploaded models: a torchvision architecture by name plus the user's trained weights (safetensors).

No code is uploaded. The weights are streamed to disk with a hard limit on the bytes actually read
(not only on Content-Length), checked tensor by tensor against the architecture, and stored
content-addressed: the model id is a hash of the architecture, its arguments, the input shape and
the weights' bytes, so the same upload gives the same id. The model's search space is derived from
its graph and kept beside the weights as ``<id>.yaml`` (a job names the id instead of a space).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import yaml

from nasprune.errors import GraphError
from nasprune.service.api.errors import ModelNotFound, PayloadTooLarge
from nasprune.service.api.schemas import ModelPublic

MODEL_ID_PATTERN = r"^m_[0-9a-f]{16}$"


class ModelStore:
    """``<models_dir>/<id>.safetensors`` + ``<id>.yaml``, written atomically (temp file + rename)."""

    def __init__(self, folder: Path, limit_bytes: int):
        self.folder = folder
        self.limit = limit_bytes

    async def receive(
        self, chunks: AsyncIterator[bytes], room: Callable[[int], None] | None = None
    ) -> tuple[Path, str]:
        """Stream a body to a temp file in the models folder; 413 past ``limit`` bytes read, or when
        ``room(bytes read so far)`` raises (the uploader's storage quota)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".safetensors", dir=self.folder)
        h, n = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    n += len(chunk)
                    if n > self.limit:
                        raise PayloadTooLarge(
                            f"the weights file is larger than this server accepts ({self.limit // 2**20} MiB)"
                        )
                    if room is not None:
                        room(n)
                    h.update(chunk)
                    f.write(chunk)
            if n == 0:
                raise GraphError("the request body is empty: send the weights file (safetensors) as the body")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp), h.hexdigest()

    def add(self, tmp: Path, sha256: str, architecture: str, num_classes: int,
            input_shape: tuple[int, ...], dataset: str,
            admit: Callable[[str, int], None] | None = None) -> ModelPublic:  # fmt: skip
        """Check the weights against the architecture, derive the space, store both; the temp file is
        moved or removed, whatever happens. ``admit(model_id, n_bytes)`` is called before anything is
        put in place; what it raises stops the upload with nothing kept (storage quotas)."""
        import torch

        from nasprune.data import dataset_io
        from nasprune.graph import analyze_model, build_model, fixed_groups, load_weights, space_from_analysis

        try:
            kwargs = {"num_classes": num_classes}
            if not architecture.startswith("torchvision:"):
                raise GraphError(
                    f"architecture '{architecture}': the service builds torchvision architectures only "
                    "('torchvision:NAME'); prune your own code locally with 'nasprune search --model'"
                )
            if dataset:  # a built-in or one uploaded to this server (its data dir holds the models folder)
                shape, classes = dataset_io(dataset, self.folder.parent)
                if shape != tuple(input_shape) or classes != num_classes:
                    raise GraphError(
                        f"dataset '{dataset}' has inputs {shape} and {classes} classes; "
                        f"the model was declared with input_shape {tuple(input_shape)} and num_classes {num_classes}"
                    )
            model = build_model(architecture, kwargs)
            load_weights(model, tmp)
            model.eval()
            analysis = analyze_model(model, torch.zeros(1, *input_shape))
            model_id = "m_" + hashlib.sha256(
                json.dumps([architecture, kwargs, list(input_shape), sha256]).encode()
            ).hexdigest()[:16]
            space = space_from_analysis(
                analysis, model_id, architecture, num_classes, dataset=dataset, model_kwargs=kwargs
            )
            space = space.model_copy(update={"weights": f"{model_id}.safetensors", "weights_sha256": sha256})
            weights = self.folder / f"{model_id}.safetensors"
            if admit is not None:
                admit(model_id, tmp.stat().st_size)
            os.replace(tmp, weights)
            text = yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
            frozen = [f"{f.node}: {f.reason}" for f in analysis.frozen]
            record = self._public(space, fixed_groups(analysis, space), frozen)
            _write(self.folder / f"{model_id}.json", record.model_dump_json(indent=1))
            _write(self.folder / f"{model_id}.yaml", text)  # last: a model exists once its space does
            return record
        finally:
            tmp.unlink(missing_ok=True)

    def _public(self, space, fixed: dict[str, str], frozen: list[str]) -> ModelPublic:
        return ModelPublic(
            id=space.name,
            architecture=space.model,
            num_classes=space.num_classes,
            input_shape=list(space.input_shape),
            dataset=space.dataset or None,
            groups=len(space.groups),
            depth_sequences=len(space.sequences),
            subnets=float(space.size),
            kept_full_width=fixed,
            frozen=frozen,
            weights_sha256=space.weights_sha256,
        )

    def path(self, model_id: str) -> Path:
        import re

        path = self.folder / f"{model_id}.yaml"
        if not re.fullmatch(MODEL_ID_PATTERN, model_id) or not path.is_file():
            raise ModelNotFound(model_id)
        return path

    def get(self, model_id: str, hidden: set[str] = frozenset()) -> ModelPublic:
        if model_id in hidden:
            raise ModelNotFound(model_id)
        path = self.path(model_id)
        return ModelPublic.model_validate_json(path.with_suffix(".json").read_text())

    def list(self, hidden: set[str] = frozenset()) -> list[ModelPublic]:
        if not self.folder.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.folder.glob("m_*.yaml")) if p.stem not in hidden]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
