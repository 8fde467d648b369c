"""The device setting: CPU for real here; the CUDA path where torch sees a GPU (reported as skipped otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.train import (
    TrainConfig,
    TrainError,
    checkpoint_meta,
    epoch_order,
    load_checkpoint,
    resolve_device,
    train_supernet,
)
from nasprune.train_loop import _device_batches

NO_CUDA = "no CUDA device on this machine (torch.cuda.is_available() is False): the CUDA path is not run here"


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainError, match="not one of cpu, cuda, cuda:N, auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="no CUDA device.*--torch-device cpu or --torch-device auto"):
            resolve_device("cuda")


def test_cli_refuses_a_bad_device_or_worker_count():
    for args, msg in (
        (["--torch-device", "gpu"], "--torch-device must be cpu, cuda"),
        (["--workers", "0"], "--workers must be"),
        (["--device", "cuda"], "--device is now --torch-device (cpu, cuda or auto): --device names the latency"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "nasprune", "train", "--space", "mlp_digits", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0 and msg in out.stderr, out.stderr


def test_batches_continue_the_seeded_order_from_any_step_and_shard_it():
    ds = load_dataset("digits")
    cfg = TrainConfig(batch_size=64, max_shift=0, seed=3)
    x_all, y_all = ds.tensors("train")
    order = epoch_order(ds, cfg, 2)
    assert sorted(torch.cat(order).tolist()) == list(range(len(y_all)))  # each example once per epoch
    assert not torch.equal(torch.cat(order), torch.cat(epoch_order(ds, cfg, 3)))
    full = list(_device_batches(ds, cfg, 2, 0, torch.device("cpu")))
    resumed = list(_device_batches(ds, cfg, 2, 5, torch.device("cpu")))
    assert [i for i, _, _ in resumed] == list(range(5, len(order)))
    for (_, x, y), (_, fx, fy), idx in zip(resumed, full[5:], order[5:], strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy) and torch.equal(x, x_all[idx])
    (_, x0, y0), (_, x1, y1) = (next(_device_batches(ds, cfg, 2, 5, torch.device("cpu"), (r, 2))) for r in (0, 1))
    assert torch.equal(x0, x_all[order[5][0::2]]) and torch.equal(x1, x_all[order[5][1::2]])
    assert len(y0) + len(y1) == len(order[5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_training_on_cuda_with_mixed_precision(tmp_path):
    ds = load_dataset("digits")
    cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=64, max_shift=0, n_random=1)
    res = train_supernet("mlp_digits", cfg, ds, progress=False, checkpoint=tmp_path / "sn.pt", device="cuda")
    assert res.history[-1]["val_acc_largest"] > 0.8  # chance is 0.1
    net = load_checkpoint(tmp_path / "sn.pt")  # a CUDA-trained checkpoint loads on the CPU
    assert all(t.device.type == "cpu" for t in net.state_dict().values())
    assert len(checkpoint_meta(tmp_path / "sn.pt")["history"]) == 3
    cpu_acc = Evaluator(net, ds).accuracy(net.space.largest())
    gpu_acc = Evaluator(net.cuda(), ds).accuracy(net.space.largest())  # the evaluator on CUDA
    assert abs(cpu_acc - gpu_acc) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_an_image_space_trains_and_reorders_on_cuda(tmp_path):
    ds = load_dataset("mnist5k")
    small = type(ds)(
        ds.name, ds.input_shape, ds.num_classes, {**ds.splits, "train": tuple(t[:512] for t in ds.splits["train"])}
    )
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=128, n_random=1)  # the warm-up ends in a channel reorder
    res = train_supernet("resnet_mnist", cfg, small, progress=False, device="auto")
    assert len(res.history) == 2 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]
