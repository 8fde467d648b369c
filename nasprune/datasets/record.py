"""What a dataset is: a validated record (shape, layout, classes, split policy, normalisation, content hash)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
Layout = Literal["features", "sequence", "image", "text"]
"""``features``: (F,); ``sequence``: (C, L); ``image``: (C, H, W). Always channels first, one sample.
``text``: (2, L) int64 token ids and attention mask (:mod:`nasprune.datasets.text`), not normalised."""

LAYOUTS: dict[int, Layout] = {1: "features", 2: "sequence", 3: "image"}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

class Builtin(NamedTuple):
    """What is known of a built-in dataset without loading it."""

    input_shape: tuple[int, ...]
    num_classes: int
    samples: int
    """train + val + test (a test checks them against the loaded data)."""
    item_bytes: int = 4
    """Bytes per value once loaded: float32's 4, or 8 for int64 token ids and masks."""


BUILTINS: dict[str, Builtin] = {
    "mnist5k": Builtin((1, 28, 28), 10, 5_000),
    "digits": Builtin((64,), 10, 1_797),
    "mnist1d": Builtin((1, 40), 10, 10_000),
    "fashion_mnist": Builtin((1, 28, 28), 10, 70_000),
    "rotten_tomatoes": Builtin((2, 64), 2, 12_808, item_bytes=8),
}
"""The built-in datasets (``nasprune.data.DATASETS`` builds them). The one list of built-in names (the
store refuses them as user names, the CLI and the API list them from here)."""
BUILTIN_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    n: (b.input_shape, b.num_classes) for n, b in BUILTINS.items()
}
"""Input shape and number of classes of each built-in."""


def layout_of(input_shape: tuple[int, ...]) -> Layout:
    return LAYOUTS[len(input_shape)]


class SplitPolicy(BaseModel):
    """How samples fall into train / val / test (+ a calibration subset of train for BatchNorm).

    ``stratified``: a fixed-seed stratified split with the ``val`` and ``test`` fractions;
    ``given``: the user's own split (split arrays in the file), kept as it is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["stratified", "given"] = "stratified"
    val: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    test: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    calib: Annotated[int, Field(ge=1, le=100_000)] = 500
    seed: Annotated[int, Field(ge=0)] = 0

    def min_per_class(self) -> int:
        """The fewest samples a class may have for a stratified split to put at least one in each split."""
        return max(3, int(np.ceil(1 / min(self.val, self.test))))


class Normalization(BaseModel):
    """``x_normalised = (x_raw - mean) / std`` over ``axis``: one value (``global``), one per channel
    (``channel``: the first axis of a sample) or one per feature (``feature``: flat inputs). Computed on
    the train split of the raw data, the values a deployed model's caller feeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    axis: Literal["global", "channel", "feature"]
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std need the same, non-zero length")
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be positive")
        return self

    def arrays(self, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """mean and std shaped to broadcast over a batch ``(N, *input_shape)``."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if self.axis == "channel":
            shape = (len(self.mean),) + (1,) * (len(input_shape) - 1)
            return mean.reshape(shape), std.reshape(shape)
        if self.axis == "feature":
            return mean.reshape(input_shape), std.reshape(input_shape)
        return mean.reshape(()), std.reshape(())

    def apply(self, x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        mean, std = self.arrays(input_shape)
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32, copy=False)


class DatasetInfo(BaseModel):
    """One dataset of the registry. ``content_hash`` (sha256 of the stored samples, labels and split)
    is part of every cache key that depends on the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    task: Literal["classification"] = "classification"
    input_shape: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1, max_length=3)]
    layout: Layout
    num_classes: Annotated[int, Field(ge=2)]
    class_names: list[str]
    split: SplitPolicy
    normalization: Normalization
    sizes: dict[str, int] = Field(description="samples per split: train, val, test, calib")
    class_counts: dict[str, list[int]] = Field(description="samples per class, per split")
    n_bytes: int = Field(description="bytes of the stored samples (float32)")
    content_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    source: str = Field(description="builtin, npz, images, csv, parquet or npy")
    builtin: bool = False
    streamed: bool = Field(False, description="train batches are read from a memory-mapped file, not held in memory")
    created_at: datetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DatasetInfo:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.layout == "text" and len(self.input_shape) != 2:
            raise ValueError(f"text samples are (2, L) (input_ids, attention_mask), not {self.input_shape}")
        if self.layout != "text" and self.layout != layout_of(self.input_shape):
            raise ValueError(f"layout '{self.layout}' does not fit input shape {self.input_shape}")
        return self

    @property
    def short_hash(self) -> str:
        return self.content_hash[:16]

    def preprocessing(self) -> dict[str, object]:
        """What a model trained on this dataset expects, for the ONNX metadata of the models delivered."""
        return {
            "dataset": self.name,
            "dataset_hash": self.short_hash,
            "input_layout": {"image": "NCHW", "sequence": "NCL", "features": "NF", "text": "N2L"}[self.layout],
            "input_shape": list(self.input_shape),
            "normalization": {
                "formula": "(x - mean) / std",
                "axis": self.normalization.axis,
                "mean": self.normalization.mean,
                "std": self.normalization.std,
            },
            "class_names": self.class_names,
        }
