"""Stored datasets as a :class:`~nasprune.datasets.dataset.Dataset`: held in memory, or streamed from a
memory-mapped file.

A streamed dataset never maps or reads its samples whole. Training batches come from windows of
``CHUNK_BYTES`` mapped one at a time (``np.memmap`` with an offset): per epoch the window order is
shuffled, then the train rows inside each window, so the process needs memory for one window and one
batch, not for the dataset. The val, test and calibration splits are read once, on first use, and
held in memory (they are what scoring a subnet reads again and again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nasprune.datasets.dataset import Dataset
from nasprune.datasets.record import SPLIT_CODES, DatasetInfo
from nasprune.errors import DatasetError

CHUNK_BYTES = 16 << 20
"""Samples are copied, checked, hashed and streamed in windows of about this many bytes."""


def npy_data_offset(path: Path) -> int:
    """Byte offset of the array data in a C-ordered ``.npy`` file."""
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        _shape, fortran, _dtype = read_header(f)
        if fortran:
            raise DatasetError(f"{path} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
        return f.tell()


def _tensors(info: DatasetInfo, x: np.ndarray, y: np.ndarray, own: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 samples and int64 labels; ``own``: ``x`` is a float32 array nobody else holds,
    normalised in place (no second copy of a large split)."""
    if own and x.dtype == np.float32 and x.flags.c_contiguous:
        mean, std = info.normalization.arrays(tuple(info.input_shape))
        x -= mean
        x /= std
        xn = x
    else:
        xn = info.normalization.apply(x, tuple(info.input_shape))
    return torch.from_numpy(np.ascontiguousarray(xn)), torch.from_numpy(y.astype(np.int64))


def in_memory(info: DatasetInfo, blob: Path) -> Dataset:
    x = np.load(blob / "x.npy", allow_pickle=False)
    y = np.load(blob / "y.npy", allow_pickle=False)
    split = np.load(blob / "split.npy", allow_pickle=False)
    calib = np.load(blob / "calib.npy", allow_pickle=False)
    splits = {s: _tensors(info, x[split == c], y[split == c]) for s, c in SPLIT_CODES.items()}
    splits["calib"] = _tensors(info, x[calib], y[calib])
    return Dataset(info.name, tuple(info.input_shape), info.num_classes, splits, info)


@dataclass(frozen=True, eq=False)
class StreamedDataset(Dataset):
    """A dataset whose train split is streamed from ``x_path`` in windows; see the module docstring."""

    x_path: Path = Path()
    offset: int = 0
    y: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    split: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    calib: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @classmethod
    def open(cls, info: DatasetInfo, blob: Path) -> StreamedDataset:
        x_path = blob / "x.npy"
        return cls(
            info.name, tuple(info.input_shape), info.num_classes, {}, info,
            x_path=x_path,
            offset=npy_data_offset(x_path),
            y=np.load(blob / "y.npy", allow_pickle=False),
            split=np.load(blob / "split.npy", allow_pickle=False),
            calib=np.load(blob / "calib.npy", allow_pickle=False),
        )  # fmt: skip

    @property
    def row_bytes(self) -> int:
        return 4 * math.prod(self.input_shape)

    @property
    def window_rows(self) -> int:
        return max(1, CHUNK_BYTES // self.row_bytes)

    def _window(self, start: int, stop: int) -> np.memmap:
        return np.memmap(self.x_path, np.float32, "r", offset=self.offset + start * self.row_bytes,
                         shape=(stop - start, *self.input_shape))  # fmt: skip

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Samples at sorted indices ``rows``, read window by window."""
        out = np.empty((len(rows), *self.input_shape), np.float32)
        w = self.window_rows
        pos = 0
        for start in range(0, len(self.y), w):
            stop = min(start + w, len(self.y))
            sel = rows[(rows >= start) & (rows < stop)]
            if len(sel):
                mm = self._window(start, stop)
                out[pos : pos + len(sel)] = mm[sel - start]
                del mm
                pos += len(sel)
        return out

    def sizes(self) -> dict[str, int]:
        return dict(self.info.sizes)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            raise DatasetError(
                f"dataset '{self.name}' is streamed from disk: its train split is read in batches "
                "(loader('train')), never whole"
            )
        if split not in ("val", "test", "calib"):
            raise DatasetError(f"unknown split '{split}' (splits: train, val, test, calib)")
        if split not in self.splits:
            rows = self.calib if split == "calib" else np.nonzero(self.split == SPLIT_CODES[split])[0]
            rows = np.sort(rows)
            self.splits[split] = _tensors(self.info, self._rows(rows), self.y[rows], own=True)
        return self.splits[split]

    def loader(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0):
        if split != "train":
            return super().loader(split, batch_size, shuffle, seed)
        return StreamLoader(self, batch_size, shuffle, seed)


class StreamLoader:
    """Batches of the train split of a :class:`StreamedDataset`: ``len()`` and iteration like a DataLoader."""

    def __init__(self, ds: StreamedDataset, batch_size: int, shuffle: bool, seed: int):
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(int((self.ds.split == 0).sum()) / self.batch_size)

    def __iter__(self):
        ds, bs = self.ds, self.batch_size
        rng = np.random.default_rng(self.seed)
        starts = np.arange(0, len(ds.y), ds.window_rows)
        if self.shuffle:
            starts = rng.permutation(starts)
        carry_x = np.empty((0, *ds.input_shape), np.float32)
        carry_y = np.empty(0, np.int64)
        for start in starts:
            stop = min(int(start) + ds.window_rows, len(ds.y))
            sel = np.nonzero(ds.split[start:stop] == 0)[0]
            if not len(sel):
                continue
            if self.shuffle:
                sel = rng.permutation(sel)
            mm = ds._window(int(start), stop)
            xb, yb = np.asarray(mm[sel]), ds.y[start:stop][sel]
            del mm
            if len(carry_y):
                xb, yb = np.concatenate([carry_x, xb]), np.concatenate([carry_y, yb])
            full = len(yb) // bs * bs
            for i in range(0, full, bs):
                yield _tensors(ds.info, xb[i : i + bs], yb[i : i + bs])
            carry_x, carry_y = xb[full:], yb[full:]
        if len(carry_y):
            yield _tensors(ds.info, carry_x, carry_y)
