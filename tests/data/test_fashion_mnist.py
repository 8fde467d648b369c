"""The built-in ``fashion_mnist``: Fashion-MNIST read from the Debian package's gzipped IDX files (or a folder
named by ``NASPRUNE_FASHION_MNIST_DIR``, flat or in torchvision's layout), split, normalised, and refused with
a message saying how to get the files when they are missing or corrupt."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nasprune.data as data
from nasprune.data import FASHION_MNIST_CLASSES, FASHION_MNIST_ENV, _load_builtin, fashion_mnist_dir, load_dataset
from nasprune.datasets import DatasetStore
from nasprune.datasets.record import BUILTIN_INPUTS
from nasprune.errors import DatasetError, DatasetNameTaken

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
NAMES = list(data.FASHION_MNIST_FILES)
INSTALLED = all((SYSTEM / f"{n}.gz").is_file() for n in NAMES)
# The install step (make install) puts the files there; without them these tests fail with the message that says how
# to get them, rather than skip: the built-in dataset is part of the product.
needs_files = pytest.mark.usefixtures("installed")


@pytest.fixture
def installed():
    if not INSTALLED:
        pytest.fail(f"Fashion-MNIST is not in {SYSTEM}: 'apt-get update && apt-get install dataset-fashion-mnist' as "
                    "root (make install does it where it can)")  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No env override and no cached built-in, before and after each test."""
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    _load_builtin.cache_clear()
    yield
    _load_builtin.cache_clear()


def official(name: str) -> np.ndarray:
    raw = gzip.decompress((SYSTEM / f"{name}.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16 if "images" in name else 8)


def write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    """An IDX file as the loader reads it: big-endian magic, then one big-endian int32 per dimension."""
    header = np.array([magic, *arr.shape], ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(arr, np.uint8).tobytes())


def fake_files(folder: Path, n_train: int = 60, n_test: int = 10) -> Path:
    """Four well-formed (but not Fashion-MNIST) IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    return folder


@needs_files
def test_splits_sizes_classes_and_normalisation():
    ds = load_dataset("fashion_mnist")
    info = ds.info
    assert (ds.input_shape, ds.num_classes) == BUILTIN_INPUTS["fashion_mnist"] == ((1, 28, 28), 10)
    assert ds.sizes() == {"train": 54_000, "val": 6_000, "test": 10_000, "calib": 1_000} == info.sizes
    assert info.class_names == list(FASHION_MNIST_CLASSES) and info.class_names[0] == "T-shirt/top"
    assert info.class_counts == {"train": [5_400] * 10, "val": [600] * 10, "test": [1_000] * 10}
    assert torch.bincount(ds.tensors("calib")[1], minlength=10).tolist() == [100] * 10
    assert info.builtin and info.source == "builtin" and info.layout == "image" and info.n_bytes == 70_000 * 784 * 4
    assert info.split.kind == "stratified" and info.split.calib == 1_000 and info.split.seed == 0
    assert info.split.test == pytest.approx(10_000 / 70_000) and info.split.val == pytest.approx(6_000 / 70_000)
    for split in ("train", "val", "test", "calib"):
        x, y = ds.tensors(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 28, 28)
        assert x.is_contiguous()
    x_train = ds.tensors("train")[0]
    assert abs(float(x_train.mean())) < 1e-4 and float(x_train.std()) == pytest.approx(1.0, abs=1e-4)
    norm = info.normalization  # on the raw 0-255 scale (the whole official train set: 72.94, 90.02)
    assert norm.axis == "channel" and norm.mean[0] == pytest.approx(72.94, abs=0.5)
    assert norm.std[0] == pytest.approx(90.02, abs=0.5)

    # test is the official t10k set, in its order; raw pixels come back from the normalised tensors
    x_test, y_test = ds.tensors("test")
    assert np.array_equal(y_test.numpy(), official("t10k-labels-idx1-ubyte"))
    raw = x_test[:100].numpy() * norm.std[0] + norm.mean[0]
    assert np.abs(raw.ravel() - official("t10k-images-idx3-ubyte")[: 100 * 784]).max() < 1e-3
    # train + val are the official 60,000 (6,000 per class), and calib is drawn from train
    y_trainval = torch.cat([ds.tensors("train")[1], ds.tensors("val")[1]])
    assert torch.bincount(y_trainval).tolist() == [6_000] * 10
    w = torch.randn(784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    finger = lambda x: set((x.reshape(len(x), -1).double() @ w).tolist())  # noqa: E731
    assert finger(ds.tensors("calib")[0]) <= finger(x_train)


@needs_files
def test_content_hash_is_stable_and_follows_the_seed():
    a = load_dataset("fashion_mnist")
    _load_builtin.cache_clear()
    b = load_dataset("fashion_mnist")
    assert a is not b and a.info.content_hash == b.info.content_hash
    assert torch.equal(a.tensors("val")[0], b.tensors("val")[0])
    del a, b
    _load_builtin.cache_clear()
    c = load_dataset("fashion_mnist", seed=1)
    assert c.sizes()["val"] == 6_000 and c.info.split.seed == 1
    assert c.info.content_hash != load_dataset("fashion_mnist").info.content_hash


@needs_files
def test_env_dir_in_torchvision_layout_gives_the_same_data(tmp_path, monkeypatch):
    system_hash = load_dataset("fashion_mnist").info.content_hash
    _load_builtin.cache_clear()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in NAMES:
        if "labels" in name:  # torchvision also leaves them uncompressed: read those as they are
            (raw / name).write_bytes(gzip.decompress((SYSTEM / f"{name}.gz").read_bytes()))
        else:
            (raw / f"{name}.gz").symlink_to(SYSTEM / f"{name}.gz")
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")  # no fallback
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert fashion_mnist_dir() == raw
    assert load_dataset("fashion_mnist").info.content_hash == system_hash

    flat = tmp_path / "flat"  # a folder holding the four files directly
    flat.mkdir()
    for name in NAMES:
        shutil.copy(SYSTEM / f"{name}.gz", flat / f"{name}.gz")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(flat))
    assert fashion_mnist_dir() == flat


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "mine"))
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "NASPRUNE_FASHION_MNIST_DIR" in msg
    for looked in (tmp_path / "mine", tmp_path / "mine" / "FashionMNIST" / "raw", tmp_path / "system"):
        assert f"{looked} (no such folder)" in msg
    assert "train-images-idx3-ubyte.gz" in msg

    # a folder with three of the four files: the missing one is named
    fake_files(tmp_path / "mine")
    (tmp_path / "mine" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"mine \(missing t10k-labels-idx1-ubyte.gz\)"):
        load_dataset("fashion_mnist")
    # a job naming it is refused at submit (cheaply: no data is read)
    from nasprune.registry import load_space

    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        data.check_dataset_fits("fashion_mnist", load_space("resnet_mnist"))


def test_corrupt_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    folder = fake_files(tmp_path / "mine")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(folder))
    bad = folder / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((60_000, 28, 28), np.uint8), 2049)  # a labels magic on an images file
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion_mnist")
    assert str(bad) in str(e.value) and "IDX header is [2049 60000 28 28], expected [2051 60000 28 28]" in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)

    write_idx(bad, np.zeros((60, 28, 28), np.uint8), 2051)  # well formed, but 60 images, not 60,000
    with pytest.raises(DatasetError, match=r"IDX header is \[2051 60 28 28\]"):
        load_dataset("fashion_mnist")

    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=f"{bad} cannot be read"):
        load_dataset("fashion_mnist")


@needs_files
def test_other_idx_data_under_these_names_is_refused(tmp_path, monkeypatch):
    """Right header and size, other content (a built-in's checkpoints carry no data hash in their names)."""
    for name in NAMES:
        (tmp_path / f"{name}.gz").symlink_to(SYSTEM / f"{name}.gz")
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.unlink()
    write_idx(labels, official("train-labels-idx1-ubyte")[::-1], 2049)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match="not the official Fashion-MNIST release"):
        load_dataset("fashion_mnist")


@needs_files
def test_a_job_may_name_it():
    from nasprune.registry import load_space

    data.check_dataset_fits("fashion_mnist", load_space("resnet_mnist"))  # (1, 28, 28), 10 classes: fits


def test_the_name_is_taken_and_listed(tmp_path):
    store = DatasetStore(tmp_path)
    with pytest.raises(DatasetNameTaken, match="taken by a built-in"):
        store.check_name("fashion_mnist")
    assert set(data.DATASETS) == set(BUILTIN_INPUTS) >= {"mnist5k", "digits", "mnist1d", "fashion_mnist"}
    with pytest.raises(DatasetError, match="fashion_mnist"):  # named among the available ones
        store.get("no_such_dataset")
