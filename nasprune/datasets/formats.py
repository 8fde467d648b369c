"""Readers of the file formats a user brings. Each returns a :class:`Source` (raw samples, labels, an
optional split, class names) or raises :class:`~nasprune.errors.DatasetError` saying what to fix.

- ``npz``: arrays ``x`` and ``y``, or ``x_train``/``y_train`` (+ ``_val``, ``_test``) for your own split,
  optionally ``class_names``; read with ``allow_pickle=False``.
- ``images``: a zip or tar archive of ``CLASS_NAME/*.png|jpg``, decoded with Pillow, resized and centre
  cropped to a declared size, grayscale (``L``) or ``RGB``.
- ``csv`` / ``parquet``: one row per sample, a label column and numeric feature columns.
- ``npy``: a folder (or an uncompressed tar) with ``x.npy`` and ``y.npy`` (optionally ``split.npy``:
  0 train, 1 val, 2 test); ``x.npy`` is memory-mapped, never read whole.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from nasprune.errors import DatasetError

Format = Literal["npz", "images", "csv", "parquet", "npy"]
FORMATS: tuple[str, ...] = ("npz", "images", "csv", "parquet", "npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGES = 1_000_000


@dataclass
class Source:
    """Samples as read: ``x`` (N, *shape), any real dtype, possibly memory-mapped; ``y`` integer class
    indices; ``split`` codes (0 train, 1 val, 2 test) when the user gave a split."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    split: np.ndarray | None = None
    fmt: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReadOptions:
    """Format options: ``size`` (H, W) and ``mode`` (``L`` or ``RGB``) for images, ``label_column`` for
    tables, ``input_shape`` to reshape flat samples (e.g. a CSV of 784 pixels as 1,28,28)."""

    size: tuple[int, int] | None = None
    mode: Literal["L", "RGB"] = "L"
    label_column: str = "label"
    input_shape: tuple[int, ...] | None = None


def guess_format(path: Path) -> str:
    """The format a path's name suggests; an error listing the formats when it suggests none."""
    name = path.name.lower()
    if path.is_dir():
        return "npy"
    for suffix, fmt in ((".npz", "npz"), (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet"),
                        (".zip", "images"), (".tar.gz", "images"), (".tgz", "images"), (".npy.tar", "npy"),
                        (".tar", "images")):  # fmt: skip
        if name.endswith(suffix):
            return fmt
    raise DatasetError(f"cannot tell the format of '{path.name}' from its name: pass --format ({', '.join(FORMATS)})")


def read(path: Path, fmt: str, options: ReadOptions, workdir: Path) -> Source:
    """Read ``path`` in format ``fmt``; ``workdir`` (removed by the caller) holds anything unpacked."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format '{fmt}' (formats: {', '.join(FORMATS)})")
    if not path.exists():
        raise DatasetError(f"'{path}' does not exist")
    reader = {"npz": _npz, "images": _images, "csv": _table, "parquet": _table, "npy": _npy}[fmt]
    src = reader(path, fmt, options, workdir)
    src.fmt = fmt
    if options.input_shape is not None:
        want = tuple(options.input_shape)
        if int(np.prod(want)) != int(np.prod(src.x.shape[1:])):
            raise DatasetError(
                f"cannot reshape samples of shape {tuple(src.x.shape[1:])} to the declared input shape {want} "
                f"({int(np.prod(src.x.shape[1:]))} values vs {int(np.prod(want))})"
            )
        src.x = src.x.reshape(len(src.x), *want)
    return src


# npz ----------------------------------------------------------------------------------------------


def _npz(path: Path, fmt: str, options: ReadOptions, workdir: Path) -> Source:
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"'{path.name}' is not a readable .npz file (an npz is a zip of .npy arrays: np.savez)")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"'{path.name}' holds pickled objects, which are never read ({e})") from None
    except Exception as e:
        raise DatasetError(f"'{path.name}' is not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DatasetError(f"'{path.name}' is a single .npy array, not an .npz archive: use --format npy with x/y")
    with data:
        try:
            keys = set(data.files)
            names = [str(c) for c in data["class_names"]] if "class_names" in keys else None
            if {"x", "y"} <= keys:
                x, y, split = data["x"], data["y"], None
            elif {"x_train", "y_train"} <= keys:
                parts = [(s, data[f"x_{s}"], data[f"y_{s}"]) for s in ("train", "val", "test") if f"x_{s}" in keys]
                missing = [s for s in ("val", "test") if f"x_{s}" not in keys]
                if missing:
                    raise DatasetError(
                        f"'{path.name}' gives its own split but lacks {', '.join(f'x_{s}/y_{s}' for s in missing)}: "
                        "give train, val and test, or only x and y for a stratified split"
                    )
                for s, xs, ys in parts:
                    if len(xs) != len(ys):
                        raise DatasetError(f"x_{s} has {len(xs)} samples but y_{s} has {len(ys)} labels")
                x = np.concatenate([p[1] for p in parts])
                y = np.concatenate([p[2] for p in parts])
                split = np.concatenate([np.full(len(p[2]), i, np.uint8) for i, p in enumerate(parts)])
            else:
                raise DatasetError(
                    f"'{path.name}' has arrays {sorted(keys)}; expected 'x' and 'y' "
                    "(or x_train/y_train, x_val/y_val, x_test/y_test for your own split)"
                )
        except ValueError as e:  # an object array inside
            raise DatasetError(f"'{path.name}': an array holds Python objects, which are never read ({e})") from None
    y, found = _labels(y, path.name)
    return Source(x, y, names or found, split)


def _labels(y: np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
    """Class indices and names from integer labels (names '0'..'K-1') or string labels (sorted names)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"{what}: labels must be one integer per sample, got an array of shape {y.shape}")
    if y.dtype.kind in "US":
        names, idx = np.unique(y.astype(str), return_inverse=True)
        return idx.astype(np.int64), [str(n) for n in names]
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DatasetError(f"{what}: labels must be whole class numbers 0..K-1, found non-integer values")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise DatasetError(f"{what}: labels must be integers 0..K-1 or class names, got dtype {y.dtype}")
    y = y.astype(np.int64)
    k = int(y.max()) + 1 if len(y) else 0
    return y, [str(i) for i in range(k)]


# tables -------------------------------------------------------------------------------------------


def _table(path: Path, fmt: str, options: ReadOptions, workdir: Path) -> Source:
    import pandas as pd

    try:
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as e:
        raise DatasetError(f"'{path.name}' is not a readable {fmt} file ({type(e).__name__}: {e})") from None
    col = options.label_column
    if col not in df.columns:
        raise DatasetError(
            f"'{path.name}' has no label column '{col}' (columns: {', '.join(map(str, df.columns[:12]))}"
            f"{', ...' if len(df.columns) > 12 else ''}); name it with --label-column"
        )
    features = df.drop(columns=[col])
    if features.shape[1] == 0:
        raise DatasetError(f"'{path.name}' has no feature columns besides the label column '{col}'")
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DatasetError(
            f"'{path.name}': feature column(s) {', '.join(bad[:5])} are not numeric; encode them as numbers "
            "or drop them"
        )
    labels = df[col]
    if labels.isna().any():
        raise DatasetError(f"'{path.name}': {int(labels.isna().sum())} row(s) have no label in column '{col}'")
    if pd.api.types.is_numeric_dtype(labels):
        y, names = _labels(labels.to_numpy(), path.name)
    else:
        y, names = _labels(labels.astype(str).to_numpy(dtype=str), path.name)
    return Source(features.to_numpy(dtype=np.float64, na_value=np.nan), y, names)


# images -------------------------------------------------------------------------------------------


def _check_member(name: str, archive: str) -> PurePosixPath:
    """Refuse absolute paths and ``..``; returns the member's path."""
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"'{archive}' holds an absolute path '{name}': refused (paths must be CLASS/FILE)")
    if ".." in p.parts or "\\" in name:
        raise DatasetError(f"'{archive}' holds a path that leaves its folder, '{name}': refused")
    return p


def _members(path: Path):
    """(name, read-bytes callable) of every regular file in a zip or tar; links and devices are refused."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_member(info.filename, path.name)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind == stat.S_IFLNK:
                    raise DatasetError(f"'{path.name}' holds a symbolic link '{info.filename}': refused")
                if info.is_dir():
                    continue
                yield info.filename, (lambda i=info: zf.read(i))
        return
    try:
        tf = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"'{path.name}' is neither a zip nor a tar archive ({e})") from None
    with tf:
        for m in tf:
            _check_member(m.name, path.name)
            if m.issym() or m.islnk():
                raise DatasetError(f"'{path.name}' holds a link '{m.name}' -> '{m.linkname}': refused")
            if m.isdir():
                continue
            if not m.isfile():
                raise DatasetError(f"'{path.name}' holds '{m.name}', which is not a regular file: refused")
            yield m.name, (lambda m=m: tf.extractfile(m).read())


def _images(path: Path, fmt: str, options: ReadOptions, workdir: Path) -> Source:
    from PIL import Image, ImageOps

    if options.size is None:
        raise DatasetError("images need a declared size: pass --size H,W (e.g. --size 32,32)")
    h, w = options.size
    files: list[tuple[str, str, bytes]] = []
    for name, read_bytes in _members(path):
        parts = PurePosixPath(name).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # hidden files and macOS resource forks
        if len(parts) != 2 or not parts[1].lower().endswith(IMAGE_SUFFIXES):
            raise DatasetError(
                f"'{path.name}' holds '{name}'; an image archive holds only CLASS_NAME/IMAGE.png|jpg "
                "(one folder per class, images directly inside)"
            )
        files.append((parts[0], name, read_bytes()))
        if len(files) > MAX_IMAGES:
            raise DatasetError(f"'{path.name}' holds more than {MAX_IMAGES} images")
    if not files:
        raise DatasetError(f"'{path.name}' holds no images: expected CLASS_NAME/IMAGE.png|jpg")
    names = sorted({c for c, _, _ in files})
    index = {c: i for i, c in enumerate(names)}
    channels = 1 if options.mode == "L" else 3
    x = np.empty((len(files), channels, h, w), np.uint8)
    y = np.empty(len(files), np.int64)
    for i, (cls, name, data) in enumerate(sorted(files, key=lambda f: f[1])):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = ImageOps.fit(img.convert(options.mode), (w, h), method=Image.Resampling.BILINEAR)
        except Exception as e:  # Pillow raises many types for damaged files
            raise DatasetError(f"image '{name}' in '{path.name}' cannot be decoded ({type(e).__name__}: {e})") from None
        arr = np.asarray(img, np.uint8)
        x[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        y[i] = index[cls]
    return Source(x, y, names)


# npy ----------------------------------------------------------------------------------------------


def _npy(path: Path, fmt: str, options: ReadOptions, workdir: Path) -> Source:
    folder = path
    if path.is_file():
        folder = workdir / "unpacked"
        folder.mkdir()
        _unpack_npy_tar(path, folder)
    x_path, y_path, s_path = folder / "x.npy", folder / "y.npy", folder / "split.npy"
    for p in (x_path, y_path):
        if not p.is_file() or p.is_symlink():
            raise DatasetError(f"'{path.name}' needs x.npy and y.npy (regular files); {p.name} is missing")
    x = NpyWindows.open(x_path)
    y, names = _labels(_open_npy(y_path), "y.npy")
    split = None
    if s_path.is_file():
        split = np.asarray(_open_npy(s_path))
        if split.dtype.kind not in "iu":
            raise DatasetError(f"split.npy must hold integers 0 (train), 1 (val), 2 (test); got dtype {split.dtype}")
    return Source(x, y, names, split)


def _open_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"{p.name} holds pickled objects, which are never read ({e})") from None
    except Exception as e:
        raise DatasetError(f"{p.name} is not a readable .npy file ({type(e).__name__}: {e})") from None


def _unpack_npy_tar(path: Path, folder: Path) -> None:
    """Copy x.npy / y.npy / split.npy out of a tar, streamed; anything else in it is an error."""
    allowed = {"x.npy", "y.npy", "split.npy"}
    try:
        tf = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"'{path.name}' is not a tar archive of x.npy and y.npy ({e})") from None
    with tf:
        for m in tf:
            _check_member(m.name, path.name)
            if m.issym() or m.islnk():
                raise DatasetError(f"'{path.name}' holds a link '{m.name}' -> '{m.linkname}': refused")
            if m.isdir():
                continue
            base = PurePosixPath(m.name).name
            if not m.isfile() or base not in allowed or PurePosixPath(m.name).parent.parts[1:]:
                raise DatasetError(f"'{path.name}' holds '{m.name}'; an npy archive holds only {sorted(allowed)}")
            src = tf.extractfile(m)
            with open(folder / base, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)


class NpyWindows:
    """A ``.npy`` array read in row slices, each through its own short-lived memory map: the whole file
    is never mapped, so it need not fit in the address space the process may use."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, n: int, sample_shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.n, self.sample_shape = path, offset, dtype, n, sample_shape

    @classmethod
    def open(cls, path: Path) -> NpyWindows:
        try:
            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(f)
                offset = f.tell()
        except Exception as e:
            raise DatasetError(f"{path.name} is not a readable .npy file ({type(e).__name__}: {e})") from None
        if fortran:
            raise DatasetError(f"{path.name} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
        if dtype.hasobject:
            raise DatasetError(f"{path.name} holds Python objects, which are never read")
        if not shape:
            raise DatasetError(f"{path.name} holds a single value, not samples")
        return cls(path, offset, dtype, shape[0], tuple(shape[1:]))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.n)
        if step != 1:
            raise IndexError("NpyWindows reads contiguous row slices only")
        if stop <= start:
            return np.empty((0, *self.sample_shape), self.dtype)
        row_bytes = self.dtype.itemsize * int(np.prod(self.sample_shape))
        mm = np.memmap(self.path, self.dtype, "r", offset=self.offset + start * row_bytes,
                       shape=(stop - start, *self.sample_shape))  # fmt: skip
        out = np.array(mm)
        del mm
        return out

    def reshape(self, n: int, *shape: int) -> NpyWindows:
        return NpyWindows(self.path, self.offset, self.dtype, n, tuple(shape))
