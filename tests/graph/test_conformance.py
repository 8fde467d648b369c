"""The graph-derived path, over every model it must handle: analysis, derived space, conversion,
select/extract parity, importance ordering, ONNX export. Models are randomly initialised (nothing
downloads weights); norms get non-trivial statistics so that slicing bugs show in outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from nasprune.elastic.modules import ElasticModule
from nasprune.export import export_subnet, read_metadata
from nasprune.graph import GraphSupernet, analyze_model, build_model, space_from_analysis
from nasprune.graph.supernet import extract
from nasprune.space import parse_space
from tests.conftest import randomize

# (reference, kwargs, input shape): torchvision's plain, depthwise + squeeze-excite + hardswish,
# concatenation models, a 1-D CNN, and the built-in models
MODELS = {
    "resnet18": ("torchvision:resnet18", {"num_classes": 10}, (3, 32, 32)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"num_classes": 10}, (3, 32, 32)),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", {"num_classes": 10}, (3, 32, 32)),
    "squeezenet1_1": ("torchvision:squeezenet1_1", {"num_classes": 10}, (3, 48, 48)),
    "cnn1d": ("nasprune.models.cnn1d:cnn1d", {"num_classes": 10}, (1, 40)),
    "resnet_mnist": ("nasprune.models.resnet_mnist:resnet_mnist", {"num_classes": 10}, (1, 28, 28)),
    "mlp_digits": ("nasprune.models.mlp_digits:mlp_digits", {"num_classes": 10}, (64,)),
}


def _build(name: str, seed: int = 0):
    ref, kwargs, shape = MODELS[name]
    torch.manual_seed(seed)
    model = randomize(build_model(ref, kwargs), seed).eval()
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed))
    analysis = analyze_model(model, x[:1])
    space = space_from_analysis(analysis, name, ref, num_classes=10, model_kwargs=kwargs)
    return model, x, analysis, space


def configs(space, n: int = 6):
    rng = np.random.default_rng(7)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    model, x, analysis, space = _build(request.param)
    with torch.no_grad():
        original = model(x)
    net = GraphSupernet(space, model)  # converted in eval mode, it stays in eval mode
    assert not net.training and not any(m.training for m in net.modules())
    return net, x, analysis, space, original


def test_converted_model_computes_what_the_original_did(built):
    net, x, _, space, original = built
    with torch.no_grad():
        assert torch.equal(net(x), original)
        with net.select(space.largest()):
            assert torch.equal(net(x), original)


def test_analysis_finds_groups_and_freezes_nothing_silently(built):
    _, _, analysis, space, _ = built
    assert len(space.groups) >= 3
    assert not analysis.frozen, analysis.frozen  # every op of these models is understood
    assert set(analysis.frozen_groups.values()) == {"network output"}
    for name, group in space.groups.items():
        size = analysis.group_size[name]
        assert max(group.widths) == size
        assert all(w % 8 == 0 for w in group.widths if w != size)
        assert min(group.widths) >= 0.25 * size - 8


def test_space_round_trips_to_yaml(built, tmp_path):
    import yaml

    _, _, _, space, _ = built
    text = yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
    again = parse_space(yaml.safe_load(text))
    assert again == space and again.digest() == space.digest()


def test_extract_matches_select_and_counts(built):
    net, x, _, space, _ = built
    for cfg in configs(space):
        with torch.no_grad(), net.select(cfg):
            ref = net(x)
        plain = extract(net, cfg)
        assert not any(isinstance(m, ElasticModule) for m in plain.modules())
        with torch.no_grad():
            got = plain(x)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-5, cfg
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)
    assert net.macs(space.smallest()) < net.macs(space.largest())


def test_select_restores_the_full_network(built):
    net, x, _, space, original = built
    with pytest.raises(RuntimeError, match="boom"), net.select(space.smallest()):
        raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(net(x), original)


def test_importance_ordering_keeps_the_function_and_sorts(built):
    net, x, _, _, original = built
    perms = net.reorder_channels()
    with torch.no_grad():
        after = net(x)
    assert (after - original).abs().max().item() <= 1e-4
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    for g in list(perms)[:3]:
        score = net.l1_importance(g)
        assert torch.all(score[:-1] >= score[1:] - 1e-5), g


def test_onnx_export_checker_and_parity(built, tmp_path):
    net, _, _, space, _ = built
    rng = np.random.default_rng(3)
    for i, cfg in enumerate([space.smallest(), space.sample(rng)]):
        path = tmp_path / f"{i}.onnx"
        res = export_subnet(net, cfg, path)  # raises above 1e-4 at batch 1 and 7
        assert res.max_abs_diff <= 1e-4
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        assert int(read_metadata(path)["params"]) == net.num_params(cfg)


def test_a_changed_model_does_not_fit_its_space():
    from nasprune.errors import GraphError

    _, _, _, space = _build("cnn1d")
    other = build_model("nasprune.models.cnn1d:cnn1d", {"num_classes": 7})
    with pytest.raises(GraphError, match="derive the space again"):
        GraphSupernet(space, other)


def test_activation_importance_is_a_data_driven_order_that_keeps_the_function():
    model, x, _, space = _build("mobilenet_v3_small")
    with torch.no_grad():
        before = model(x)
    net = GraphSupernet(space, model)
    scores = net.activation_importance([x])
    assert set(scores) == set(net.analysis.groups)
    assert all(len(v) == net.analysis.group_size[g] and torch.all(v >= 0) for g, v in scores.items())
    perms = net.reorder_channels(scores)
    with torch.no_grad():
        assert (net(x) - before).abs().max().item() <= 1e-4
    after = net.activation_importance([x])  # sorted by it, the scores now descend
    g = next(iter(perms))
    assert torch.all(after[g][:-1] >= after[g][1:] - 1e-4)
