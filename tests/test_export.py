import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nasprune.errors import ExportError
from nasprune.export import check_parity, export_subnet, read_metadata
from nasprune.graph.supernet import extract
from nasprune.registry import create_supernet


def test_parity_check_catches_a_wrong_model(tmp_path):
    net = create_supernet("mlp_digits").eval()
    cfg = net.space.smallest()
    res = export_subnet(net, cfg, tmp_path / "m.onnx")
    other = extract(net, cfg)
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(ExportError, match=r"differ by .* at batch 1 \(tolerance 0.0001\)"):
        check_parity(res.path, other, net.space.input_shape)


def test_export_rejects_invalid_config(tmp_path):
    net = create_supernet("mlp_digits")
    from nasprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"widths\.stem\.0: 7 is not allowed"):
        export_subnet(net, {"depths": {"blocks.0-2": 0}, "widths": {"stem.0": 7}}, tmp_path / "x.onnx")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nasprune", *args], capture_output=True, text=True, timeout=300)


def test_cli_export_refuses_untrained_weights_unless_asked(tmp_path, capsys):
    from nasprune.cli import main

    out = tmp_path / "m.onnx"
    code = main(
        ["export", "--space", "mlp_digits", "--smallest", "--data-dir", str(tmp_path / "empty"), "-o", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert "no trained supernet of 'mlp_digits'" in err and "--untrained" in err
    assert "--checkpoint" in err and len(err.strip().splitlines()) == 1
    code = main(
        ["export", "--space", "mlp_digits", "--smallest", "--untrained", "--data-dir", str(tmp_path), "-o", str(out)]
    )
    assert code == 0 and "UNTRAINED weights" in capsys.readouterr().out
    assert read_metadata(out)["weights"] == "untrained"


def test_exported_subnet_scores_in_onnxruntime_what_the_search_scored(tmp_path):
    """The search scores a subnet with ``Evaluator.accuracy`` (BatchNorm recalibrated on the calibration
    split); ``nasprune export`` of that subnet from the same checkpoint must score the same in onnxruntime
    (exported with the supernet's shared BatchNorm statistics, resnet_mnist's smallest subnet scored 10%)."""
    from nasprune.data import load_dataset
    from nasprune.evaluate import Evaluator
    from nasprune.latency.timing import make_session
    from nasprune.registry import load_space
    from nasprune.train import TrainConfig, checkpoint_id, save_checkpoint, supernet_path, train_supernet

    space = load_space("mlp_digits")
    trained = train_supernet(space, TrainConfig(epochs=2, warmup_epochs=1, batch_size=64, max_shift=0), progress=False)
    ckpt = save_checkpoint(trained.supernet, supernet_path(space, tmp_path))
    ds = load_dataset(space.dataset)
    cfg = space.smallest()
    searched = Evaluator(trained.supernet.eval(), ds, checkpoint_id(ckpt)).accuracy(cfg, "val")  # the objective's

    out = tmp_path / "smallest.onnx"
    r = cli("export", "--space", "mlp_digits", "--smallest", "--data-dir", str(tmp_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "BatchNorm recalibrated" in r.stdout and f"validation accuracy {searched:.2%}" in r.stdout

    x, y = ds.tensors("val")
    (logits,) = make_session(out).run(None, {"input": x.numpy()})
    onnx_acc = float(np.mean(logits.argmax(1) == y.numpy()))
    assert abs(onnx_acc - searched) <= 1.0 / len(y) + 1e-9, (onnx_acc, searched)
    assert json.loads(read_metadata(out)["bn_recalibrated"]) is True
    assert float(read_metadata(out)["accuracy"]) == pytest.approx(searched)
