"""A graph-derived supernet trains from the user's weights, with the original model as teacher."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.graph import build_model
from nasprune.graph.api import derive_space
from nasprune.train import TrainConfig, default_recipe, load_checkpoint, train_supernet

REF = "nasprune.models.cnn1d:cnn1d"


def test_training_starts_from_the_given_weights_and_checkpoints(tmp_path):
    ds = load_dataset("mnist1d")
    torch.manual_seed(3)
    model = build_model(REF, {"num_classes": 10})
    _fit(model, ds, epochs=2)  # "the user's trained model"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    space = derive_space(model, ds.input_shape, model_ref=REF, model_kwargs={"num_classes": 10}, dataset="mnist1d")
    assert default_recipe(space).max_shift == 0  # sequences get no image shift, whatever the family
    cfg = TrainConfig(epochs=1, warmup_epochs=1, batch_size=256, n_random=1)
    res = train_supernet(space, cfg, progress=False, checkpoint=tmp_path / "s.pt", weights=tmp_path / "w.safetensors")
    assert len(res.history) == 1
    assert res.history[0]["val_acc_largest"] > 0.5  # it starts from the trained weights
    net = load_checkpoint(tmp_path / "s.pt", space)
    ev = Evaluator(net, ds)
    assert abs(ev.accuracy(space.largest(), "val") - res.history[0]["val_acc_largest"]) < 0.02
    # the smallest subnet was trained too (sandwich rule with the original model as teacher)
    assert ev.accuracy(space.smallest(), "val") > 0.2  # chance is 0.1


def _fit(model, ds, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for epoch in range(epochs):
        for x, y in ds.loader("train", 128, shuffle=True, seed=epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()


def test_importance_criterion_decides_the_channel_order_training_starts_from(tmp_path):
    """``TrainConfig.importance``: the supernet starts from the trained weights sorted by the L1 norm
    of the filters or by mean |activation| on the calibration split (a learning rate of ~0 keeps
    the start visible after one epoch)."""
    from nasprune.registry import create_supernet

    ds = load_dataset("mnist1d")
    torch.manual_seed(4)
    model = build_model(REF, {"num_classes": 10})
    _fit(model, ds, epochs=1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    space = derive_space(model, ds.input_shape, model_ref=REF, model_kwargs={"num_classes": 10}, dataset="mnist1d")
    starts = {}
    for criterion in ("l1", "activation"):
        expected = create_supernet(space, path).eval()
        calib = ds.tensors("calib")[0].split(256)  # the batches training scores with
        expected.reorder_channels(expected.activation_importance(calib) if criterion == "activation" else None)
        cfg = TrainConfig(epochs=1, batch_size=512, n_random=0, lr=1e-12, weight_decay=0, importance=criterion)
        net = train_supernet(space, cfg, dataset=ds, progress=False, weights=path).supernet
        for (name, got), want in zip(net.named_parameters(), expected.parameters(), strict=True):
            assert torch.allclose(got, want, atol=1e-6), f"{criterion}: {name} is not in the expected order"
        starts[criterion] = [p.detach().clone() for p in net.parameters()]
    # the two criteria do order this model differently, so the check above tells them apart
    assert any(not torch.allclose(a, b) for a, b in zip(starts["l1"], starts["activation"], strict=True))
