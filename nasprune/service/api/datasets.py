"""Uploaded datasets: the file is streamed to disk with a hard limit on the bytes actually read, then
read, validated and stored by :class:`nasprune.datasets.DatasetStore` (content addressed, written
atomically; nothing is left behind when a check fails)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pydantic import BaseModel, Field

from nasprune.data import dataset_info
from nasprune.datasets import DatasetInfo, DatasetStore, ReadOptions, SplitPolicy
from nasprune.datasets.record import BUILTINS
from nasprune.errors import DatasetError
from nasprune.service.api.errors import DatasetNotFound, PayloadTooLarge

UPLOAD_SUFFIX = {"npz": ".npz", "images": ".archive", "csv": ".csv", "parquet": ".parquet", "npy": ".tar"}


class DatasetSummary(BaseModel):
    """One line of ``GET /v1/datasets``."""

    name: str
    builtin: bool
    source: str
    input_shape: list[int]
    num_classes: int
    samples: int | None = Field(None, description="train + val + test")
    n_bytes: int | None = None
    content_hash: str | None = None


class DatasetUploads:
    """``<data_dir>/datasets``: the registry's store, plus the streamed receipt of uploads."""

    def __init__(self, data_dir: Path, limit_bytes: int):
        self.data_dir = data_dir
        self.store = DatasetStore.at(data_dir)
        self.limit = limit_bytes

    async def receive(
        self, name: str, fmt: str, chunks: AsyncIterator[bytes], room: Callable[[int], None] | None = None
    ) -> Path:
        """Stream a body to a temp file beside the store; 413 past ``limit`` bytes read. The name is
        checked first, so a taken name costs no upload. ``room(n)`` is called with the bytes read so far
        and raises once they pass what the uploader may still store (their storage quota)."""
        self.store.check_name(name)
        folder = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.store.root))
        tmp = folder / f"upload{UPLOAD_SUFFIX[fmt]}"  # the name errors about the file show
        n = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    n += len(chunk)
                    if n > self.limit:
                        raise PayloadTooLarge(
                            f"the dataset file is larger than this server accepts ({self.limit // 2**20} MiB); "
                            "add larger datasets with 'nasprune data add' on a machine sharing the data dir"
                        )
                    if room is not None:
                        room(n)
                    f.write(chunk)
            if n == 0:
                raise DatasetError("the request body is empty: send the dataset file as the body")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return tmp

    def add(
        self,
        tmp: Path,
        name: str,
        fmt: str,
        options: ReadOptions,
        policy: SplitPolicy,
        space,
        admit: Callable[[DatasetInfo], None] | None = None,
    ) -> DatasetInfo:
        """Validate and store the received file; its temp folder is removed whatever happens. ``admit``:
        see ``DatasetStore.add``."""
        try:
            if space is not None:
                from nasprune.registry import load_space

                space = load_space(space)
            return self.store.add(name, tmp, fmt, options, policy, space, admit)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)

    def list(self, hidden: set[str] = frozenset()) -> list[DatasetSummary]:
        out = [DatasetSummary(name=n, builtin=True, source="builtin", input_shape=list(b.input_shape),
                              num_classes=b.num_classes, samples=b.samples)
               for n, b in BUILTINS.items()]  # fmt: skip
        for info in self.store.list():
            if info.name in hidden:
                continue
            out.append(
                DatasetSummary(
                    name=info.name,
                    builtin=False,
                    source=info.source,
                    input_shape=list(info.input_shape),
                    num_classes=info.num_classes,
                    samples=sum(info.sizes[s] for s in ("train", "val", "test")),
                    n_bytes=info.n_bytes,
                    content_hash=info.content_hash,
                )
            )
        return out

    def get(self, name: str, hidden: set[str] = frozenset()) -> DatasetInfo:
        if name in hidden or (name not in BUILTINS and name not in self.store.names()):
            raise DatasetNotFound(name)
        return dataset_info(name, self.data_dir)
