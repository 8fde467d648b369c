"""The user-dataset store: ``<data_dir>/datasets/``.

Adding a dataset reads the user's file (:mod:`nasprune.datasets.formats`), validates it, and writes the
canonical form into a temporary folder beside the store: ``x.npy`` (float32 raw samples, N x shape),
``y.npy`` (int64), ``split.npy`` (uint8 per sample: 0 train, 1 val, 2 test), ``calib.npy`` (indices of
the calibration subset of train), ``info.json``. Samples are copied chunk by chunk, so a file larger
than memory is never held whole. The folder is then renamed to ``blobs/<content hash>`` (content
addressed: the same data added twice is stored once) and the name's record ``<name>.json`` is
created last, exclusively (``os.link``): a name exists once its data is complete, and a failure at
any step leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nasprune.datasets.formats import ReadOptions, Source, guess_format, read
from nasprune.datasets.record import (
    BUILTIN_INPUTS,
    NAME_PATTERN,
    SPLIT_CODES,
    DatasetInfo,
    Normalization,
    SplitPolicy,
    layout_of,
)
from nasprune.datasets.stream import CHUNK_BYTES, StreamedDataset, in_memory
from nasprune.errors import DatasetError, DatasetNameTaken
from nasprune.paths import datasets_dir

STREAM_BYTES = 256 << 20
"""Datasets whose samples take more than this are streamed from disk for training (train split); so is
any dataset that takes more than a quarter of the memory the loading process has room for."""
BUILTIN_NAMES = tuple(BUILTIN_INPUTS)
"""Names taken by the built-in datasets (``nasprune.data`` builds them; the list is ``record.BUILTIN_INPUTS``)."""


class DatasetStore:
    """User datasets under ``root`` (``<data_dir>/datasets``)."""

    def __init__(self, root: Path, stream_bytes: int = STREAM_BYTES):
        self.root = Path(root)
        self.stream_bytes = stream_bytes

    @classmethod
    def at(cls, data_dir: str | Path | None = None) -> DatasetStore:
        return cls(datasets_dir(data_dir))

    # records --------------------------------------------------------------------------------------

    def record_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def blob(self, info: DatasetInfo) -> Path:
        return self.root / "blobs" / info.content_hash[:32]

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if re.fullmatch(NAME_PATTERN, p.stem))

    def get(self, name: str) -> DatasetInfo:
        path = self.record_path(name)
        if not re.fullmatch(NAME_PATTERN, name) or not path.is_file():
            known = ", ".join([*BUILTIN_NAMES, *self.names()])
            raise DatasetError(
                f"unknown dataset '{name}' (available: {known}); add one with 'nasprune data add NAME PATH'"
            )
        return DatasetInfo.model_validate_json(path.read_text())

    def list(self) -> list[DatasetInfo]:
        return [self.get(n) for n in self.names()]

    # adding ---------------------------------------------------------------------------------------

    def check_name(self, name: str) -> None:
        if not re.fullmatch(NAME_PATTERN, name):
            raise DatasetError(
                f"dataset name '{name}' is not allowed: use a lowercase letter, then lowercase letters, digits "
                "or '_' (at most 64 characters)"
            )
        if name in BUILTIN_NAMES:
            raise DatasetNameTaken(f"dataset name '{name}' is taken by a built-in dataset: choose another name")
        if self.record_path(name).exists():
            raise DatasetNameTaken(f"dataset name '{name}' is already taken: choose another name")

    def add(
        self,
        name: str,
        path: str | Path,
        fmt: str | None = None,
        options: ReadOptions | None = None,
        policy: SplitPolicy | None = None,
        space=None,
        admit: Callable[[DatasetInfo], None] | None = None,
    ) -> DatasetInfo:
        """Read, validate and store ``path`` as dataset ``name``; with ``space``, also check that it
        fits that space's model (input shape, classes). Nothing is left on disk when it fails.

        ``admit(info)`` is called with the dataset as it would be stored (``info.n_bytes`` written) before
        it is put in place; what it raises stops the add, with nothing left on disk (storage quotas)."""
        self.check_name(name)
        path = Path(path)
        fmt = fmt or guess_format(path)
        options = options or ReadOptions()
        policy = policy or SplitPolicy()
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".add-", dir=self.root))
        try:
            src = read(path, fmt, options, work)
            staged = work / "blob"
            staged.mkdir()
            info = ingest(name, src, policy, staged, self.stream_bytes)
            if space is not None:
                check_fits(info, space)
            if admit is not None:
                admit(info)
            return self._commit(info, staged)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _commit(self, info: DatasetInfo, staged: Path) -> DatasetInfo:
        blob = self.blob(info)
        blob.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, blob)
        except OSError:
            if not (blob / "info.json").is_file():  # another add of the same content is complete: reuse it
                raise
        tmp = self.root / f".{info.name}.{os.getpid()}.json.tmp"
        tmp.write_text(info.model_dump_json(indent=1))
        try:
            os.link(tmp, self.record_path(info.name))  # atomic, and fails if the name was taken meanwhile
        except FileExistsError:
            raise DatasetNameTaken(f"dataset name '{info.name}' is already taken: choose another name") from None
        finally:
            tmp.unlink(missing_ok=True)
        return info

    # loading --------------------------------------------------------------------------------------

    def load(self, name: str):
        """The dataset as a :class:`nasprune.data.Dataset` (normalised float32 tensors), streamed from
        disk for training when it was stored as streamed."""
        info = self.get(name)
        blob = self.blob(info)
        if not (blob / "x.npy").is_file():
            raise DatasetError(f"dataset '{name}': its data folder {blob} is missing; add the dataset again")
        streamed = info.streamed or info.n_bytes > memory_room() // 4
        return StreamedDataset.open(info, blob) if streamed else in_memory(info, blob)


def memory_room() -> int:
    """Bytes this process could still allocate: the smaller of the memory the machine has available and
    the room left under its address-space limit (``RLIMIT_AS``), if it has one."""
    import resource

    room = 1 << 62
    try:
        with open("/proc/meminfo") as f:
            room = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        room = min(room, soft - used)
    return max(room, 0)


# validation and canonical form ----------------------------------------------------------------------


def ingest(name: str, src: Source, policy: SplitPolicy, out: Path, stream_bytes: int = STREAM_BYTES) -> DatasetInfo:
    """Validate ``src`` and write its canonical form into ``out``; the record of what was written."""
    x, y, names = src.x, np.asarray(src.y), list(src.class_names)
    n = len(y)
    if n == 0 or len(x) == 0:
        raise DatasetError("the dataset has no samples")
    if len(x) != n:
        raise DatasetError(f"{len(x)} samples but {n} labels: every sample needs exactly one label")
    shape = tuple(int(s) for s in x.shape[1:])
    if not 1 <= len(shape) <= 3:
        raise DatasetError(
            f"samples have shape {shape}; a sample must be (features,), (channels, length) or (channels, H, W) "
            "(declare one with --input-shape)"
        )
    if x.dtype.kind not in "iufb":
        raise DatasetError(f"samples must be numbers, got dtype {x.dtype}")
    k = len(names)
    if k < 2:
        raise DatasetError(f"the dataset has {k} class(es); classification needs at least 2")
    if y.min() < 0 or y.max() >= k:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DatasetError(f"label {bad} is outside 0..{k - 1} ({k} classes): labels are class indices")
    counts = np.bincount(y, minlength=k)
    empty = [names[i] for i in np.nonzero(counts == 0)[0]]
    if empty:
        raise DatasetError(
            f"class(es) {', '.join(map(repr, empty[:5]))} have no samples: labels must be 0..K-1 with every class "
            "present (renumber them)"
        )
    split = _split_codes(y, names, counts, src.split, policy)
    calib = _calib(y, split, policy)

    rows = max(1, CHUNK_BYTES // (4 * int(np.prod(shape))))
    h = hashlib.sha256(json.dumps({"shape": [n, *shape], "dtype": "float32", "classes": names}).encode())
    stats = _Stats(shape)
    # written sequentially, chunk by chunk (no mapping of the whole file: the process may have less
    # address space than the dataset takes)
    with open(out / "x.npy", "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (n, *shape)}  # fmt: skip
        np.lib.format.write_array_header_2_0(f, header)
        for start in range(0, n, rows):
            chunk = np.ascontiguousarray(x[start : start + rows], dtype=np.float32)
            finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(1)
            if not finite.all():
                i = start + int(np.argmin(finite))
                raise DatasetError(
                    f"sample {i} (label {names[y[i]]!r}) has NaN or infinite values: clean or drop such samples"
                )
            stats.add(chunk[split[start : start + len(chunk)] == 0])
            h.update(chunk)
            f.write(chunk)
    norm = stats.result()
    y64 = y.astype(np.int64)
    for arr in (y64, split, calib):
        h.update(arr.tobytes())
    np.save(out / "y.npy", y64)
    np.save(out / "split.npy", split)
    np.save(out / "calib.npy", calib)
    n_bytes = n * int(np.prod(shape)) * 4
    sizes = {s: int((split == c).sum()) for s, c in SPLIT_CODES.items()}
    sizes["calib"] = len(calib)
    class_counts = {s: np.bincount(y[split == c], minlength=k).tolist() for s, c in SPLIT_CODES.items()}
    info = DatasetInfo(
        name=name,
        input_shape=shape,
        layout=layout_of(shape),
        num_classes=k,
        class_names=names,
        split=policy.model_copy(update={"kind": "given"}) if src.split is not None else policy,
        normalization=norm,
        sizes=sizes,
        class_counts=class_counts,
        n_bytes=n_bytes,
        content_hash=h.hexdigest(),
        source=src.fmt,
        streamed=n_bytes > stream_bytes,
        created_at=datetime.now(UTC),
    )
    (out / "info.json").write_text(info.model_dump_json(indent=1))
    return info


def _split_codes(y: np.ndarray, names: list[str], counts: np.ndarray, given, policy: SplitPolicy) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    if given is not None:
        split = np.asarray(given)
        if len(split) != len(y):
            raise DatasetError(f"the split has {len(split)} entries for {len(y)} samples")
        if split.min() < 0 or split.max() > 2:
            raise DatasetError("split codes must be 0 (train), 1 (val) or 2 (test)")
        split = split.astype(np.uint8)
        for code, s in enumerate(("train", "val", "test")):
            if not (split == code).any():
                raise DatasetError(f"your split has no {s} samples: give train, val and test samples")
        missing = [names[i] for i in np.nonzero(np.bincount(y[split == 0], minlength=len(names)) == 0)[0]]
        if missing:
            raise DatasetError(
                f"class(es) {', '.join(map(repr, missing[:5]))} have no train samples in your split: "
                "a model cannot learn a class it never sees"
            )
        return split
    need = policy.min_per_class()
    few = [(names[i], int(c)) for i, c in enumerate(counts) if c < need]
    if few:
        shown = ", ".join(f"{n!r} ({c})" for n, c in few[:5])
        raise DatasetError(
            f"class(es) {shown} have too few samples for a stratified split with val {policy.val:g} and test "
            f"{policy.test:g}: each class needs at least {need}; add samples, merge classes, or give your own "
            "split (x_train/x_val/x_test in an npz, or split.npy)"
        )
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=policy.test, stratify=y, random_state=policy.seed)
    _train, val = train_test_split(
        rest, test_size=policy.val / (1 - policy.test), stratify=y[rest], random_state=policy.seed
    )
    split = np.zeros(len(y), np.uint8)
    split[val], split[test] = 1, 2
    return split


def _calib(y: np.ndarray, split: np.ndarray, policy: SplitPolicy) -> np.ndarray:
    """A stratified subset of train (indices) for BatchNorm recalibration; all of train if it is small."""
    from sklearn.model_selection import train_test_split

    train = np.nonzero(split == 0)[0]
    k = len(np.unique(y[train]))
    if policy.calib >= len(train) - k:
        return train.astype(np.int64)
    counts = np.bincount(y[train])
    strat = y[train] if policy.calib >= k and counts[counts > 0].min() >= 2 else None
    _, cal = train_test_split(train, test_size=policy.calib, stratify=strat, random_state=policy.seed)
    return np.sort(cal).astype(np.int64)


class _Stats:
    """Mean and std of the train split, per channel (images, sequences) or per feature (flat), accumulated
    chunk by chunk in float64. A constant channel/feature keeps std 1 (centred, not scaled)."""

    def __init__(self, shape: tuple[int, ...]):
        self.axis = "feature" if len(shape) == 1 else "channel"
        self.s = np.zeros(shape[0], np.float64)
        self.ss = np.zeros(shape[0], np.float64)
        self.count = 0

    def add(self, chunk: np.ndarray) -> None:
        if not len(chunk):
            return
        c = chunk.reshape(len(chunk), len(self.s), -1)
        self.s += c.sum((0, 2), dtype=np.float64)
        self.ss += np.einsum("ncl,ncl->c", c, c, dtype=np.float64)
        self.count += c.shape[0] * c.shape[2]

    def result(self) -> Normalization:
        mean = self.s / self.count
        std = np.sqrt(np.maximum(self.ss / self.count - mean**2, 0.0))
        std = np.where(std < 1e-6 * np.maximum(1.0, np.abs(mean)), 1.0, std)
        return Normalization(axis=self.axis, mean=mean.tolist(), std=std.tolist())


def check_fits(info: DatasetInfo, space) -> None:
    """Refuse a dataset that does not fit ``space``'s model: its input shape and its number of classes."""
    model = getattr(space, "model", space.name)
    if tuple(info.input_shape) != tuple(space.input_shape):
        raise DatasetError(
            f"dataset '{info.name}' has samples of shape {tuple(info.input_shape)} but space '{space.name}' "
            f"({model}) takes inputs of shape {tuple(space.input_shape)}: add the data with a matching "
            "--size/--mode or --input-shape, or search a space built for this input"
        )
    if info.num_classes != space.num_classes:
        raise DatasetError(
            f"dataset '{info.name}' has {info.num_classes} classes but space '{space.name}' ({model}) outputs "
            f"{space.num_classes}: derive a space with --num-classes {info.num_classes} "
            "(nasprune model inspect ... --save)"
        )
