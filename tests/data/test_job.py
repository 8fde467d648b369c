"""A search job on a user's dataset: trained and scored on it, and the delivered ONNX says how to feed it
(input layout and shape, normalisation on the raw scale, class names), so raw inputs + metadata give
the model's accuracy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort

from nasprune.data import load_dataset
from nasprune.datasets import DatasetStore
from nasprune.registry import load_space
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from nasprune.train import TrainConfig, save_checkpoint, supernet_path, train_supernet
from tests.conftest import SPACE


def test_job_on_user_data_delivers_its_preprocessing(prepared, tmp_path):
    root = shutil.copytree(prepared[0], tmp_path / "data")  # the session's data dir stays as other tests expect it
    table = prepared[1]
    from sklearn.datasets import load_digits

    d = load_digits()
    raw_x, raw_y = d.data.astype(np.float32), d.target  # raw 0..16 counts: the user's own scale
    np.savez(tmp_path / "mine.npz", x=raw_x, y=raw_y, class_names=np.array([f"digit {i}" for i in range(10)]))
    info = DatasetStore.at(root).add("my_digits", tmp_path / "mine.npz", space=load_space(SPACE))
    space = load_space(SPACE).model_copy(update={"dataset": "my_digits"})
    ds = load_dataset("my_digits", data_dir=root)
    res = train_supernet(space, TrainConfig(epochs=8, warmup_epochs=2, batch_size=64, max_shift=0), ds, progress=False)
    ckpt = supernet_path(space, root)
    assert ckpt.name.endswith(f"-d{info.short_hash}.pt")  # the data's content is in the checkpoint's key
    save_checkpoint(res.supernet, ckpt)
    budget = float(np.quantile([table.predict(table.space.sample(np.random.default_rng(i))) for i in range(50)], 0.7))
    job = SearchJob(space=SPACE, dataset="my_digits", latency_budget_ms=budget, n_trials=6, seed=1)
    ctx = JobContext(job_id="user-data", storage_url=f"sqlite:///{tmp_path / 'trials.db'}",
                     output_dir=tmp_path / "out", data_dir=root)  # fmt: skip
    result = run_job(job, ctx)
    assert result.recommended is not None
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nasprune.dataset"] == "my_digits" and meta["nasprune.dataset_hash"] == info.short_hash
    assert meta["nasprune.input_layout"] == "NF" and json.loads(meta["nasprune.input_shape"]) == [64]
    assert json.loads(meta["nasprune.class_names"])[3] == "digit 3"
    norm = json.loads(meta["nasprune.normalization"])
    assert norm["formula"] == "(x - mean) / std" and len(norm["mean"]) == 64
    # raw test inputs, preprocessed from the metadata alone, score like the search said
    x, y = ds.tensors("test")
    xs = x.numpy() * np.array(norm["std"], np.float32) + np.array(norm["mean"], np.float32)  # back to raw
    blob = DatasetStore.at(root).blob(info)
    raw_test = np.load(blob / "x.npy")[np.load(blob / "split.npy") == 2]
    assert np.allclose(xs, raw_test, atol=1e-3)  # the metadata's mean/std are on the user's raw scale
    feed = ((xs - np.array(norm["mean"], np.float32)) / np.array(norm["std"], np.float32)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    acc = float((sess.run(None, {sess.get_inputs()[0].name: feed})[0].argmax(1) == y.numpy()).mean())
    assert abs(acc - result.recommended.test_accuracy) < 1e-6 and acc > 0.5
