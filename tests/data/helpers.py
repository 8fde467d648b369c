"""Small files in every format a user brings, written for the tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np


def blobs(n_per_class: int = 20, k: int = 3, shape=(1, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable classes: class c has mean c (so a model can learn them)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.normal(size=(len(y), *shape)).astype(np.float32) * 0.3 + y.reshape(-1, *([1] * len(shape)))
    return x, y


def png(color: int, size=(12, 10), mode="L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "L" else (color, 255 - color, 0)).save(buf, "PNG")
    return buf.getvalue()


def image_zip(path: Path, classes=("cat", "dog"), n: int = 12, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for c, cls in enumerate(classes):
            for i in range(n):
                zf.writestr(f"{cls}/{i:03d}.png", png(40 + 150 * c + i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def image_tar(path: Path, classes=("cat", "dog"), n: int = 12) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for c, cls in enumerate(classes):
            for i in range(n):
                data = png(40 + 150 * c + i, mode="RGB")
                info = tarfile.TarInfo(f"{cls}/{i:03d}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path
