"""Training and evaluation on real offline data (small budgets: these check behaviour, not quality)."""

from __future__ import annotations

import socket

import pytest
import torch

from nasprune.data import DATASETS, load_dataset
from nasprune.errors import CheckpointError
from nasprune.evaluate import Evaluator, recalibrate_bn
from nasprune.graph import GraphSupernet
from nasprune.registry import create_supernet, load_space
from nasprune.train import TrainConfig, checkpoint_id, load_checkpoint, save_checkpoint, train_supernet

FAST = TrainConfig(epochs=6, warmup_epochs=1, batch_size=64, lr=0.05, max_shift=0, n_random=1)


@pytest.fixture(scope="module")
def trained():
    return train_supernet("mlp_digits", FAST, progress=False)


def test_training_reduces_loss_and_beats_chance(trained):
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < 0.5 * losses[0]
    ds = load_dataset("digits")
    ev = Evaluator(trained.supernet, ds)
    space = trained.supernet.space
    assert ev.accuracy(space.largest(), "test") > 0.85  # chance is 0.10
    assert ev.accuracy(space.smallest(), "test") > 0.5


def test_sandwich_step_trains_largest_smallest_and_random(monkeypatch):
    seen: list[str] = []
    original = GraphSupernet.select

    def spy(self, cfg):
        seen.append(self.space.parse_config(cfg).key())
        return original(self, cfg)

    monkeypatch.setattr(GraphSupernet, "select", spy)
    space = load_space("mlp_digits")
    ds = load_dataset("digits")
    small = type(ds)(
        ds.name, ds.input_shape, ds.num_classes, {**ds.splits, "train": tuple(t[:64] for t in ds.splits["train"])}
    )
    train_supernet(
        space,
        TrainConfig(epochs=1, warmup_epochs=0, batch_size=64, n_random=2, max_shift=0),
        dataset=small,
        progress=False,
    )
    step = seen[:4]  # one step = largest, smallest, two random subnets (then evaluation selects)
    assert step[0] == space.largest().key()
    assert step[1] == space.smallest().key()
    assert len(step) == 4


def test_recalibration_changes_stats_and_restores_mode(trained):
    ds = load_dataset("digits")
    net = create_supernet("mlp_digits")
    net.load_state_dict(trained.supernet.state_dict())
    net.eval()
    bn = net.body.stem[1]
    before = bn.running_mean.clone()
    momentum = bn.momentum
    x, _ = ds.tensors("calib")
    recalibrate_bn(net, [x[:100], x[100:200]])
    assert not net.training and bn.momentum == momentum
    assert not torch.allclose(before, bn.running_mean)
    # the cumulative average over two batches equals the full-batch mean of the first layer's pre-activations
    with torch.no_grad():
        pre = net.body.stem[0](x[:200])
    assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-4)
    net.train()
    recalibrate_bn(net, [x[:50]])
    assert net.training


def test_checkpoint_round_trip(trained, tmp_path):
    path = save_checkpoint(trained.supernet, tmp_path / "sn.pt")
    net = load_checkpoint(path)
    x = load_dataset("digits").tensors("val")[0][:16]
    cfg = net.space.smallest()
    with torch.no_grad(), net.select(cfg), trained.supernet.eval().select(cfg):
        assert torch.equal(net(x), trained.supernet(x))
    assert len(checkpoint_id(path)) == 16


def test_checkpoint_of_another_space_is_refused(trained, tmp_path):
    path = save_checkpoint(trained.supernet, tmp_path / "sn.pt")
    with pytest.raises(CheckpointError, match="trained for space 'mlp_digits'.*not 'resnet_mnist'"):
        load_checkpoint(path, "resnet_mnist")


def test_corrupted_checkpoint_is_refused(trained, tmp_path):
    path = save_checkpoint(trained.supernet, tmp_path / "sn.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data[: len(data) - 100]))
    with pytest.raises(CheckpointError, match="damaged or not a nasprune checkpoint"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_datasets_load_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name, build in DATASETS.items():
        ds = build(0)
        sizes = ds.sizes()
        assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0 and sizes["calib"] > 0, name
        x, y = ds.tensors("train")
        assert x.shape[1:] == ds.input_shape and set(y.unique().tolist()) == set(range(ds.num_classes)), name


def test_splits_are_stratified_disjoint_and_seeded():
    a, b = DATASETS["mnist5k"](0), DATASETS["mnist5k"](0)
    assert torch.equal(a.tensors("train")[0], b.tensors("train")[0])
    counts = torch.bincount(a.tensors("test")[1])
    assert counts.min() == counts.max() == 100  # 1,000 test images, 10 classes
    train = {hash(r.numpy().tobytes()) for r in a.tensors("train")[0]}
    test = {hash(r.numpy().tobytes()) for r in a.tensors("test")[0]}
    assert not train & test


def test_a_job_sets_the_training_length_and_such_a_supernet_is_cached_apart(tmp_path):
    """``get_supernet(epochs=N)``, what ``search``/``submit --train-epochs`` reach: N epochs, its own file."""
    from nasprune.train import default_recipe, get_supernet, supernet_path

    space = load_space("mlp_digits")
    epochs: list[int] = []
    _, path = get_supernet(space, tmp_path, progress=False, on_epoch=lambda rec: epochs.append(rec["epoch"]), epochs=2)
    assert len(epochs) == 2 and path == supernet_path(space, tmp_path, 2) and path.name.endswith("-e2.pt")
    assert not supernet_path(space, tmp_path).exists()  # the default-length supernet is not stood in for
    assert supernet_path(space, tmp_path, default_recipe(space).epochs) == supernet_path(space, tmp_path)
    _, again = get_supernet(space, tmp_path, progress=False, on_epoch=lambda rec: epochs.append(rec["epoch"]), epochs=2)
    assert again == path and len(epochs) == 2  # loaded, not trained again
