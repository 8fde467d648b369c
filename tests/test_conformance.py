"""The conformance suite: every registered space, automatically (add a YAML, get these tests)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from nasprune.elastic.modules import ElasticModule
from nasprune.evaluate import recalibrate_bn
from nasprune.export import export_subnet, read_metadata
from nasprune.graph.supernet import extract
from nasprune.registry import create_supernet, list_spaces, load_space
from tests.conftest import randomize

SPACES = list_spaces()
N_RANDOM = 20
N_EXPORT = 2


def configs(space):
    rng = np.random.default_rng(1234)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(N_RANDOM))]


@pytest.fixture(scope="module", params=SPACES)
def net(request):
    torch.manual_seed(0)
    return randomize(create_supernet(load_space(request.param))).eval()


def _x(space, batch=5, seed=0):
    return torch.randn((batch, *space.input_shape), generator=torch.Generator().manual_seed(seed))


def test_extract_matches_select_and_counts_params(net):
    x = _x(net.space)
    for cfg in configs(net.space):
        with torch.no_grad(), net.select(cfg):
            ref = net(x)
        plain = extract(net, cfg)
        assert not any(isinstance(m, ElasticModule) for m in plain.modules())
        with torch.no_grad():
            got = plain(x)
        assert (got - ref).abs().max().item() <= 1e-5, cfg
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)


def test_extract_with_a_slice_cache_shares_weights_not_statistics(net):
    """Cached extraction (what the evaluator does) gives the same models, copies each slice once,
    and never shares BatchNorm statistics (recalibrating one subnet must not touch another)."""
    x, cache = _x(net.space), {}
    cfgs = configs(net.space)
    first = [extract(net, cfg, cache) for cfg in cfgs]
    n_slices = len(cache)
    again = [extract(net, cfg, cache) for cfg in cfgs]
    assert len(cache) == n_slices  # nothing copied the second time
    for cfg, a, b in zip(cfgs, first, again, strict=True):
        with torch.no_grad():
            assert (a(x) - extract(net, cfg)(x)).abs().max().item() <= 1e-6, cfg
        shared = {p.data_ptr() for p in a.parameters() if not p.requires_grad}
        assert shared and shared <= {p.data_ptr() for p in b.parameters()}
        stats_a = {t.data_ptr() for n, t in a.named_buffers() if "running" in n}
        stats_b = {t.data_ptr() for n, t in b.named_buffers() if "running" in n}
        assert not stats_a & stats_b
    # and behaviourally: recalibrating every model of the first batch leaves the second one's outputs alone
    with torch.no_grad():
        before = [b.eval()(x) for b in again]
        for a in first:
            recalibrate_bn(a, [x * 3 + 1])
        after = [b.eval()(x) for b in again]
    assert all(torch.equal(u, v) for u, v in zip(before, after, strict=True))
    assert any(not torch.equal(a.eval()(x), u) for a, u in zip(first, before, strict=True))


def test_select_restores_full_network(net):
    x = _x(net.space)
    with torch.no_grad():
        before = net(x)
        with pytest.raises(RuntimeError, match="boom"), net.select(net.space.smallest()):
            raise RuntimeError("boom")
        after = net(x)
    assert torch.equal(before, after)


def test_reordering_keeps_full_network_function(net):
    x = _x(net.space)
    with torch.no_grad():
        before = net(x)
        perms = net.reorder_channels()
        after = net(x)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert (after - before).abs().max().item() <= 1e-5


def test_reordering_puts_important_channels_first(net):
    net.reorder_channels()
    for group in net.analysis.groups:
        norms = net.l1_importance(group)
        assert torch.all(norms[:-1] >= norms[1:] - 1e-5), group


def test_macs_shrink_with_smaller_configs(net):
    sp = net.space
    assert net.macs(sp.smallest()) < net.macs(sp.largest())
    assert net.num_params(sp.smallest()) < net.num_params(sp.largest())


def test_onnx_export_checker_and_parity(net, tmp_path):
    """Largest, smallest and 2 random subnets (an export with its parity check costs 2-5 s; the
    extraction tests above cover 20 random subnets)."""
    for i, cfg in enumerate(configs(net.space)[: 2 + N_EXPORT]):
        path = tmp_path / f"{i}.onnx"
        res = export_subnet(net, cfg, path)  # raises ExportError above 1e-4 at batch 1 and 7
        assert res.max_abs_diff <= 1e-4
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        meta = read_metadata(path)
        assert meta["subnet_key"] == cfg.key()
        assert int(meta["params"]) == net.num_params(cfg)
        assert not (tmp_path / f"{i}.onnx.data").exists()
