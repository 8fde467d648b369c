"""int8 static quantization (onnxruntime, QDQ, S8S8, per-channel) of a trained built-in subnet."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.export import export_subnet, read_metadata
from nasprune.quantize import (
    ArrayReader,
    calibration_inputs,
    is_qdq,
    onnx_accuracy,
    quantize_model,
    split_accuracy,
)
from nasprune.registry import load_space
from nasprune.train import TrainConfig, train_supernet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    space = load_space("mlp_digits")
    res = train_supernet(space, TrainConfig(epochs=6, warmup_epochs=1, batch_size=64, max_shift=0), progress=False)
    ds = load_dataset(space.dataset)
    ev = Evaluator(res.supernet, ds)
    cfg = space.largest()
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    export_subnet(res.supernet, cfg, path, model=ev.subnet(cfg))
    return path, ds, ev.accuracy(cfg, "val")


def test_int8_model_is_valid_qdq_and_scores_within_a_few_points(exported, tmp_path):
    path, ds, torch_acc = exported
    fp32 = split_accuracy(path, ds, "val")
    assert fp32 == pytest.approx(torch_acc, abs=1 / 300)  # onnxruntime scores the export as torch did
    assert fp32 > 0.8  # a trained subnet, so the comparison below means something
    q = quantize_model(path, tmp_path / "int8.onnx", calibration_inputs(ds), metadata={"nasprune.precision": "int8"})
    proto = onnx.load(str(q))
    onnx.checker.check_model(proto, full_check=True)
    assert is_qdq(q) and not is_qdq(path)
    # per-channel weights: a weight DequantizeLinear with one scale per output channel
    inits = {i.name: i for i in proto.graph.initializer}
    scales = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)
    meta = read_metadata(q)
    assert meta["precision"] == "int8" and meta["subnet_key"] == read_metadata(path)["subnet_key"]
    int8 = split_accuracy(q, ds, "val")
    assert abs(int8 - fp32) <= 0.03
    assert int8 != pytest.approx(1 / 10, abs=0.05)  # not a broken model at chance


def test_reader_batches_and_rewinds_and_bad_method_is_named(exported, tmp_path):
    r = ArrayReader(np.zeros((70, 4), np.float32), "x", batch=32)
    assert [len(b["x"]) for b in iter(r.get_next, None)] == [32, 32, 6]
    r.rewind()
    assert r.get_next()["x"].shape == (32, 4)
    with pytest.raises(ValueError, match="calibration"):
        ArrayReader(np.zeros((0, 4), np.float32))
    path, ds, _ = exported
    with pytest.raises(ValueError, match="allowed: minmax, entropy, percentile"):
        quantize_model(path, tmp_path / "x.onnx", calibration_inputs(ds), "kl")  # type: ignore[arg-type]
    assert onnx_accuracy(path, *(t.numpy() for t in ds.tensors("test"))) > 0.8
