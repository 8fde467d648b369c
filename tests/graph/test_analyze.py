"""Graph analysis on small hand-made models: what joins channels, what is skippable, what is frozen
and why (an unknown op is never assumed elementwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasprune.errors import GraphError
from nasprune.graph import GraphSupernet, analyze_model, space_from_analysis
from nasprune.graph.supernet import extract
from tests.conftest import randomize


class Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace a branch on a tensor's value
            return x * 2
        return x


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class Net(nn.Module):
    """stem -> [32] -> two residual blocks -> (branch a | branch b) concat -> unknown op zone -> head."""

    def __init__(self, weird: str = "none"):
        super().__init__()
        self.weird = weird
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = nn.Sequential(Residual(32), Residual(32))
        self.a = nn.Conv2d(32, 16, 1)
        self.b = nn.Conv2d(32, 24, 1)
        self.mix = nn.Conv2d(40, 48, 3, padding=1, groups=2 if weird == "grouped" else 1)
        self.dd = DataDependent()
        self.head = nn.Linear(48 * 4 * 4, 5)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = F.relu(self.mix(x))
        if self.weird == "roll":
            x = torch.roll(x, 1, dims=1)
        elif self.weird == "autograd":
            x = Scale.apply(x)
        elif self.weird == "data":
            x = self.dd(x)
        elif self.weird == "transpose":
            x = x.transpose(2, 3)
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(torch.flatten(x, 1))


X = torch.randn(2, 3, 8, 8)


def test_groups_concat_offsets_and_skippable_blocks():
    a = analyze_model(Net(), X[:1])
    assert set(a.groups) == {"stem", "a", "b", "mix", "blocks.0.conv1", "blocks.1.conv1"}
    # the residual stream: stem and both blocks' convs write the same channels
    assert a.group_of(a.layers["blocks.1.conv2"].out_layout[0].var) == "stem"
    mix_in = a.layers["mix"].in_layout
    assert [a.group_of(s.var) for s in mix_in] == ["a", "b"]  # concat: two segments at offsets 0 and 16
    head_in = a.layers["head"].in_layout
    assert head_in[0].repeat == 16  # flatten -> linear: a channel is 4x4 features
    assert a.sequences == {"blocks.0-1": ["blocks.0", "blocks.1"]}
    assert a.group_within["blocks.0.conv1"] == "blocks.0"
    assert not a.frozen


@pytest.mark.parametrize(
    ("weird", "reason"),
    [
        ("roll", "unsupported function torch.roll"),
        ("autograd", "inside custom autograd function Scale"),
        ("data", "fx cannot trace it"),
        ("transpose", "unsupported method transpose"),
        ("grouped", "grouped convolution (groups=2"),
    ],
)
def test_what_cannot_be_analysed_is_frozen_with_its_reason(weird, reason):
    torch.manual_seed(0)
    model = randomize(Net(weird)).eval()
    a = analyze_model(model, X[:1])
    assert any(reason in f.reason for f in a.frozen), a.frozen
    assert "mix" in a.frozen_groups and reason.split(" (")[0] in a.frozen_groups["mix"]
    assert "mix" not in a.groups
    if weird == "grouped":  # the grouped conv's inputs are frozen too
        assert {"a", "b"} <= set(a.frozen_groups)
    else:
        assert {"a", "b"} <= set(a.groups)
    # the rest still prunes, and extraction stays exact
    space = space_from_analysis(a, "net", "tests.graph:Net", num_classes=5)
    net = GraphSupernet(space, model).eval()
    rng = np.random.default_rng(0)
    for cfg in [space.smallest(), space.sample(rng)]:
        with torch.no_grad(), net.select(cfg):
            ref = net(X)
        with torch.no_grad():
            assert (extract(net, cfg)(X) - ref).abs().max().item() <= 1e-5


def test_untraceable_top_level_forward_is_a_clear_error():
    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.conv(x) if x.mean() > 0 else x

    with pytest.raises(GraphError, match="cannot trace Top.forward"):
        analyze_model(Top(), X[:1])


def test_digest_is_stable_and_tracks_the_architecture():
    d1 = analyze_model(Net(), X[:1]).digest
    d2 = analyze_model(Net(), X[:1]).digest
    d3 = analyze_model(Net("roll"), X[:1]).digest
    assert d1 == d2 != d3


def test_skipping_blocks_keeps_shapes_and_drops_their_groups():
    torch.manual_seed(0)
    model = randomize(Net()).eval()
    a = analyze_model(model, X[:1])
    space = space_from_analysis(a, "net", "tests.graph:Net", num_classes=5)
    net = GraphSupernet(space, model).eval()
    cfg = space.config({"blocks.0-1": 0}, {"stem": 16, "a": 8, "b": 8, "mix": 24})
    assert "blocks.0.conv1" not in cfg.widths
    plain = extract(net, cfg)
    assert isinstance(plain.blocks[0], nn.Identity) and isinstance(plain.blocks[1], nn.Identity)
    with torch.no_grad(), net.select(cfg):
        assert (plain(X) - net(X)).abs().max().item() <= 1e-5


def test_a_model_file_in_the_current_directory_is_found_and_a_factory_without_num_classes_works(
    tmp_path, monkeypatch
):
    import sys

    from nasprune.errors import GraphError
    from nasprune.graph import build_model

    (tmp_path / "here_model_x1.py").write_text(
        "import torch.nn as nn\n"
        "def make_model():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "here_model_x1", raising=False)
    model = build_model("here_model_x1:make_model", {"num_classes": 10})  # the factory takes no num_classes
    assert model[1].out_features == 10
    assert str(tmp_path) not in sys.path  # on the path only while importing (searched after every installed package)
    with pytest.raises(GraphError, match=r"current directory .* for not_here_x1\.py .*PYTHONPATH"):
        build_model("not_here_x1:make_model", {})


class IdentityShortcut(nn.Module):
    """A basic block as the CIFAR ResNets write it: ``relu(f(x) + self.shortcut(x))`` with
    ``self.shortcut = nn.Identity()`` where the shape is kept, a 1x1 projection where it changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return torch.relu(self.drop(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(IdentityShortcut(16, 16), IdentityShortcut(16, 16))
        self.layer2 = nn.Sequential(IdentityShortcut(16, 32, 2), IdentityShortcut(32, 32), IdentityShortcut(32, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_shortcut_written_as_an_identity_module_is_a_skippable_block(tmp_path):
    """The residual add reads the block input through ``nn.Identity`` (and the branch through a
    Dropout): still a skippable block. Before, such ResNets got no depth choices at all."""
    from nasprune.export import export_model
    from nasprune.latency.timing import make_session

    torch.manual_seed(0)
    model = randomize(CifarResNet()).eval()
    a = analyze_model(model, X[:1])
    assert a.sequences == {"layer1.0-1": ["layer1.0", "layer1.1"], "layer2.1-2": ["layer2.1", "layer2.2"]}
    space = space_from_analysis(a, "cifar", "tests.graph.test_analyze:CifarResNet", num_classes=5)
    net = GraphSupernet(space, model).eval()
    cfg = space.config({"layer1.0-1": 0, "layer2.1-2": 1}, {g: min(grp.widths) for g, grp in space.groups.items()})
    plain = extract(net, cfg)
    assert isinstance(plain.layer1[0], nn.Identity) and isinstance(plain.layer2[2], nn.Identity)
    with torch.no_grad(), net.select(cfg):
        ref = net(X)
        assert (plain(X) - ref).abs().max().item() <= 1e-5
    exported = export_model(plain, tuple(X.shape[1:]), tmp_path / "m.onnx")  # checks parity at batch 1 itself
    sess = make_session(exported.path)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: X.numpy()})
    assert np.abs(got - ref.numpy()).max() <= 1e-4
