"""A loaded dataset: normalised tensors per split (``train``, ``val``, ``test``, ``calib``) and its record.

What every loader returns (the built-ins of :mod:`nasprune.data`, a stored dataset held in memory or
streamed, :mod:`nasprune.datasets.stream`); importable as ``nasprune.data.Dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from nasprune.datasets.record import DatasetInfo
from nasprune.errors import DatasetError

__all__ = ["SPLITS", "Dataset"]

SPLITS = ("train", "val", "test", "calib")


@dataclass(frozen=True)
class Dataset:
    """Tensors for every split; images are float32 and normalised, labels int64."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    info: DatasetInfo | None = None

    @property
    def content_hash(self) -> str:
        """16 hex digits of the record's content hash (part of every cache key that depends on data)."""
        return self.info.short_hash if self.info is not None else "unknown"

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.splits:
            raise DatasetError(f"unknown split '{split}' (splits: {', '.join(self.splits)})")
        return self.splits[split]

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
        x, y = self.tensors(split)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def sizes(self) -> dict[str, int]:
        return {k: len(v[1]) for k, v in self.splits.items()}
