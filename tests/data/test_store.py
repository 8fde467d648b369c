"""The dataset registry: every format a user brings, content addressing, and every bad input refused
with its reason and nothing left on disk."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from nasprune.data import check_dataset_fits, load_dataset
from nasprune.datasets import DatasetStore, ReadOptions, SplitPolicy
from nasprune.errors import DatasetError
from nasprune.registry import load_space
from tests.data.helpers import blobs, image_tar, image_zip, png


@pytest.fixture
def store(tmp_path):
    return DatasetStore(tmp_path / "datasets")


def _leftovers(store: DatasetStore) -> list[str]:
    """Anything in the store but complete records and their blobs."""
    if not store.root.exists():
        return []
    names = set(store.names())
    out = [p.name for p in store.root.iterdir() if p.name != "blobs" and p.stem not in names]
    hashes = {store.blob(store.get(n)).name for n in names}
    blobs_dir = store.root / "blobs"
    if blobs_dir.exists():
        out += [p.name for p in blobs_dir.iterdir() if p.name not in hashes]
    return out


def test_npz_round_trip_with_train_statistics(store, tmp_path):
    x, y = blobs(shape=(1, 8))
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    info = store.add("blobs1d", tmp_path / "d.npz")
    assert info.input_shape == (1, 8) and info.layout == "sequence" and info.num_classes == 3
    assert info.class_names == ["a", "b", "c"] and info.source == "npz" and not info.streamed
    assert sum(info.sizes[s] for s in ("train", "val", "test")) == 60
    assert all(min(c) >= 1 for c in info.class_counts.values())  # stratified: every class in every split
    ds = store.load("blobs1d")
    xt, yt = ds.tensors("train")
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert abs(float(xt.mean())) < 1e-4 and abs(float(xt.std()) - 1) < 0.05  # normalised with train stats
    assert ds.info.content_hash == info.content_hash and ds.content_hash == info.short_hash
    # the same content under another name is stored once (content addressed)
    info2 = store.add("blobs1d_again", tmp_path / "d.npz")
    assert info2.content_hash == info.content_hash
    assert len(list((store.root / "blobs").iterdir())) == 1
    assert [i.name for i in store.list()] == ["blobs1d", "blobs1d_again"]


def test_npz_own_split_is_kept(store, tmp_path):
    x, y = blobs(n_per_class=10)
    np.savez(tmp_path / "s.npz", x_train=x[::2], y_train=y[::2], x_val=x[1::4], y_val=y[1::4],
             x_test=x[3::4], y_test=y[3::4])  # fmt: skip
    info = store.add("own", tmp_path / "s.npz")
    assert info.split.kind == "given" and info.sizes["train"] == 15 and info.sizes["val"] == 8


def test_images_zip_and_tar(store, tmp_path):
    info = store.add("pets", image_zip(tmp_path / "pets.zip"), options=ReadOptions(size=(8, 6), mode="L"))
    assert info.input_shape == (1, 8, 6) and info.class_names == ["cat", "dog"] and info.layout == "image"
    rgb = store.add("pets_rgb", image_tar(tmp_path / "pets.tar.gz"), options=ReadOptions(size=(5, 5), mode="RGB"))
    assert rgb.input_shape == (3, 5, 5) and len(rgb.normalization.mean) == 3
    x, _ = store.load("pets").tensors("val")
    assert x.shape[1:] == (1, 8, 6)


def test_csv_and_parquet_with_named_labels(store, tmp_path):
    import pandas as pd

    x, y = blobs(shape=(4,))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df["kind"] = np.array(["setosa", "versicolor", "virginica"])[y]
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    a = store.add("tab_csv", tmp_path / "t.csv", options=ReadOptions(label_column="kind"))
    b = store.add("tab_pq", tmp_path / "t.parquet", options=ReadOptions(label_column="kind"))
    assert a.input_shape == (4,) and a.layout == "features" and a.class_names == ["setosa", "versicolor", "virginica"]
    assert a.normalization.axis == "feature" and len(a.normalization.mean) == 4
    assert a.content_hash == b.content_hash  # same values, same content


def test_npy_folder_is_streamed_when_large(tmp_path):
    x, y = blobs(n_per_class=40, shape=(1, 16))
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    store = DatasetStore(tmp_path / "datasets", stream_bytes=1024)  # anything above 1 KiB is streamed
    info = store.add("big", folder)
    assert info.streamed and info.source == "npy"
    ds = store.load("big")
    loader = ds.loader("train", batch_size=16, shuffle=True, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) and sum(len(b[1]) for b in batches) == info.sizes["train"]
    # the streamed batches hold the same samples as the in-memory load
    mem = DatasetStore(tmp_path / "datasets2").add("big", folder)
    xs = torch.cat([b[0] for b in batches])
    ref = DatasetStore(tmp_path / "datasets2").load("big").tensors("train")[0]
    assert mem.content_hash == info.content_hash
    assert torch.allclose(xs.sum(0), ref.sum(0), atol=1e-3)
    with pytest.raises(DatasetError, match="streamed"):
        ds.tensors("train")
    assert ds.tensors("calib")[0].shape[0] == info.sizes["calib"]


def test_load_dataset_finds_user_datasets(tmp_path):
    x, y = blobs(shape=(64,), k=10, n_per_class=10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    DatasetStore.at(tmp_path).add("mine", tmp_path / "d.npz")
    ds = load_dataset("mine", data_dir=tmp_path)
    assert ds.input_shape == (64,) and ds.num_classes == 10
    check_dataset_fits("mine", load_space("mlp_digits"), data_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"shape \(64,\) but space 'resnet_mnist'"):
        check_dataset_fits("mine", load_space("resnet_mnist"), data_dir=tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope", data_dir=tmp_path)


# every bad input: its own error, and nothing half-written ------------------------------------------


def _zip(path, entries: dict[str, bytes], symlink: str | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _tar_with_link(path):
    with tarfile.open(path, "w") as tf:
        data = png(10)
        info = tarfile.TarInfo("cat/0.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dog/1.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    return path


def _cases(tmp_path):
    x, y = blobs()
    x_nan = x.copy()
    x_nan[7, 0, 3] = np.nan
    x_inf = x.copy()
    x_inf[2, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", x=x_nan, y=y)
    np.savez(tmp_path / "inf.npz", x=x_inf, y=y)
    np.savez(tmp_path / "labels.npz", x=x, y=y, class_names=np.array(["a", "b"]))
    xf, yf = blobs(n_per_class=20)
    yf[:57] = np.where(yf[:57] == 2, 0, yf[:57])  # class 2 keeps 3 samples
    np.savez(tmp_path / "few.npz", x=xf, y=yf)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3))
    good = {f"cat/{i}.png": png(i) for i in range(12)} | {f"dog/{i}.png": png(200 + i) for i in range(12)}
    return {
        "nan": (tmp_path / "nan.npz", {}, r"sample 7 \(label '0'\) has NaN or infinite values"),
        "inf": (tmp_path / "inf.npz", {}, "sample 2 .* NaN or infinite"),
        "labels vs classes": (tmp_path / "labels.npz", {}, r"label 2 is outside 0..1 \(2 classes\)"),
        "too few per class": (tmp_path / "few.npz", {}, r"class\(es\) '2' \(3\) have too few samples .* at least 10"),
        "pickle": (tmp_path / "obj.npz", {}, "Python objects|pickled"),
        "corrupt image": (
            _zip(tmp_path / "bad.zip", good | {"dog/broken.png": b"\x89PNG\r\n\x1a\nnot really"}),
            {"options": ReadOptions(size=(8, 8))},
            "image 'dog/broken.png' in 'bad.zip' cannot be decoded",
        ),
        "empty archive": (_zip(tmp_path / "empty.zip", {}), {"options": ReadOptions(size=(8, 8))}, "holds no images"),
        "absolute path": (
            _zip(tmp_path / "abs.zip", good | {"/etc/cat/x.png": png(1)}),
            {"options": ReadOptions(size=(8, 8))},
            "absolute path '/etc/cat/x.png': refused",
        ),
        "dot-dot": (
            _zip(tmp_path / "dots.zip", good | {"cat/../../evil.png": png(1)}),
            {"options": ReadOptions(size=(8, 8))},
            "leaves its folder, 'cat/../../evil.png': refused",
        ),
        "symlink in zip": (
            _zip(tmp_path / "link.zip", good, symlink="cat/link.png"),
            {"options": ReadOptions(size=(8, 8))},
            "symbolic link 'cat/link.png': refused",
        ),
        "symlink in tar": (
            _tar_with_link(tmp_path / "link.tar"),
            {"options": ReadOptions(size=(8, 8))},
            "link 'dog/1.png' -> '/etc/passwd': refused",
        ),
        "input shape vs model": (
            image_zip(tmp_path / "ok.zip"),
            {"options": ReadOptions(size=(8, 8)), "space": load_space("resnet_mnist")},
            r"shape \(1, 8, 8\) but space 'resnet_mnist' .* takes inputs of shape \(1, 28, 28\)",
        ),
        "classes vs model": (
            image_zip(tmp_path / "ok2.zip"),
            {"options": ReadOptions(size=(28, 28)), "space": load_space("resnet_mnist")},
            "has 2 classes but space 'resnet_mnist' .* outputs 10: derive a space with --num-classes 2",
        ),
    }


def test_every_bad_input_is_refused_and_leaves_nothing(store, tmp_path):
    for case, (path, kwargs, pattern) in _cases(tmp_path).items():
        with pytest.raises(DatasetError, match=pattern):
            store.add("case", path, **kwargs)
        assert _leftovers(store) == [], case
        assert store.names() == [], case


def test_names(store, tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    store.add("taken", tmp_path / "d.npz")
    with pytest.raises(DatasetError, match="'taken' is already taken"):
        store.add("taken", tmp_path / "d.npz")
    with pytest.raises(DatasetError, match="taken by a built-in"):
        store.add("mnist1d", tmp_path / "d.npz")
    with pytest.raises(DatasetError, match="is not allowed"):
        store.add("../up", tmp_path / "d.npz")
    with pytest.raises(DatasetError, match="too few samples .* val 0.4"):
        store.add("other", tmp_path / "d.npz", policy=SplitPolicy(val=0.4, test=0.04))
    assert _leftovers(store) == []


def test_scoring_payload_carries_the_scoring_splits_not_a_name(tmp_path):
    """What Ray trials get through the object store: calib + val arrays and the record, picklable."""
    import pickle

    from nasprune.data import dataset_from_payload, scoring_payload

    x, y = blobs(shape=(64,), k=10, n_per_class=10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    DatasetStore.at(tmp_path).add("sent", tmp_path / "d.npz")
    ds = load_dataset("sent", data_dir=tmp_path)
    back = dataset_from_payload(pickle.loads(pickle.dumps(scoring_payload(ds))))
    assert set(back.splits) == {"calib", "val"} and back.info == ds.info
    for split in ("calib", "val"):
        assert torch.equal(back.tensors(split)[0], ds.tensors(split)[0])


def test_npy_with_own_split_and_bad_split_codes(store, tmp_path):
    x, y = blobs(n_per_class=10)
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.save(folder / "split.npy", np.arange(len(y)) % 3)
    info = store.add("given", folder)
    assert info.split.kind == "given" and info.sizes["train"] == info.sizes["val"] == info.sizes["test"] == 10
    np.save(folder / "split.npy", np.full(len(y), 5))
    with pytest.raises(DatasetError, match=r"split codes must be 0 \(train\), 1 \(val\) or 2 \(test\)"):
        store.add("bad_split", folder)
    split = np.where(y == 2, 1, 0)
    split[::7] = 2
    np.save(folder / "split.npy", split)
    with pytest.raises(DatasetError, match="class\\(es\\) '2' have no train samples in your split"):
        store.add("bad_split", folder)
    assert _leftovers(store) == [] and store.names() == ["given"]
