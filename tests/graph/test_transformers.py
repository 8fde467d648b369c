"""Transformers through the graph-derived path: attention heads, FFN neurons and encoder layers as the
space's groups and depth, on torch's ``nn.TransformerEncoder`` / ``nn.MultiheadAttention`` in a small
sequence classifier and on torchvision's ``VisionTransformer`` configured small (``vit_tiny``).
Randomly initialised (every parameter, so a zero-initialised head does not hide slicing bugs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from nasprune.elastic.attention import Attention, ElasticMultiheadAttention
from nasprune.elastic.modules import ElasticModule
from nasprune.export import export_subnet, read_metadata
from nasprune.graph import GraphSupernet, analyze_model, build_model, space_from_analysis
from nasprune.graph.supernet import extract
from nasprune.space import parse_space


class EncoderClassifier(nn.Module):
    """Token features -> Linear embedding + positions -> nn.TransformerEncoder -> mean over tokens -> Linear."""

    def __init__(self, features: int = 12, max_len: int = 16, d: int = 32, heads: int = 4, ff: int = 64,
                 layers: int = 3, num_classes: int = 10, norm_first: bool = False):  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d))
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        return self.head(self.encoder(h).mean(dim=1))


def encoder_classifier(num_classes: int = 10, norm_first: bool = False) -> nn.Module:
    return EncoderClassifier(num_classes=num_classes, norm_first=norm_first)


MODELS = {  # name: (reference, kwargs, input shape of one sample, dynamic sequence dims of the input)
    "encoder_post_norm": ("tests.graph.test_transformers:encoder_classifier", {}, (16, 12), (1,)),
    "encoder_pre_norm": ("tests.graph.test_transformers:encoder_classifier", {"norm_first": True}, (16, 12), (1,)),
    "vit_tiny": ("nasprune.models.vit_tiny:vit_tiny", {}, (1, 28, 28), ()),
}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (LayerNorm scales around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.LayerNorm) and name.endswith(
                "weight") else 0.0  # fmt: skip
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + scale)
    return model


def _build(name: str, seed: int = 0):
    ref, kwargs, shape, seq_dims = MODELS[name]
    torch.manual_seed(seed)
    model = _randomize(build_model(ref, kwargs), seed).eval()
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(seed))
    analysis = analyze_model(model, x[:1])
    space = space_from_analysis(analysis, name, ref, num_classes=10, model_kwargs=kwargs)
    return model, x, analysis, space, seq_dims


def configs(space, n: int = 6):
    rng = np.random.default_rng(7)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    model, x, analysis, space, seq_dims = _build(request.param)
    with torch.no_grad():
        original = model(x)
    net = GraphSupernet(space, model)
    assert not net.training and not any(m.training for m in net.modules())
    return request.param, net, x, analysis, space, original, seq_dims


def test_groups_are_heads_ffn_neurons_and_layers(built):
    name, _, _, analysis, space, _, _ = built
    layers = 4 if name == "vit_tiny" else 3
    heads = {g: grp for g, grp in space.groups.items() if grp.unit == "heads"}
    ffn = {g: grp for g, grp in space.groups.items() if grp.unit == "channels"}
    assert len(heads) == layers and len(ffn) == layers, space.groups
    for g, grp in heads.items():
        assert analysis.group_size[g] == 4 and grp.widths == [1, 2, 3, 4]  # a width is a number of heads
        assert g.endswith(("self_attn", "self_attention")) and grp.within is not None
    for g, grp in ffn.items():
        assert analysis.group_size[g] == (128 if name == "vit_tiny" else 64)
        assert g.endswith(("linear1", "mlp.0")) and grp.within is not None
    ((_, depth),) = space.sequences.items()
    assert len(depth.blocks) == layers and depth.depths == list(range(layers + 1))


def test_what_is_frozen_says_why(built):
    name, _, _, analysis, _, _, _ = built
    reasons = set(analysis.frozen_groups.values())
    assert "network output" in reasons
    if name == "vit_tiny":  # torchvision reshapes the patch embedding to hidden_dim, a constant
        assert analysis.frozen_groups["conv_proj"] == "reshape to the fixed channel count 64 (at reshape)"
        assert any("encoder.pos_embedding" in r for r in reasons)
    else:  # the residual stream meets the position parameter, which has the stream's width
        assert analysis.frozen_groups["embed"].startswith("used with the fixed-size tensor 'pos'")


def test_converted_model_computes_what_the_original_did(built):
    _, net, x, _, space, original, _ = built
    with torch.no_grad():
        got = net(x)
        with net.select(space.largest()):
            assert torch.equal(net(x), got)
    # torch's MultiheadAttention and TransformerEncoderLayer run a fused kernel in eval mode without
    # gradients; the converted model runs their composed path, equal to rounding
    assert (got - original).abs().max().item() <= 1e-5


def test_extract_matches_select_and_counts(built):
    _, net, x, _, space, _, _ = built
    for cfg in configs(space):
        with torch.no_grad(), net.select(cfg):
            ref = net(x)
        plain = extract(net, cfg)
        assert not any(isinstance(m, ElasticModule) for m in plain.modules())
        with torch.no_grad():
            got = plain(x)
        assert (got - ref).abs().max().item() <= 1e-5, cfg
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)
    smallest_heads = extract(net, space.sample(np.random.default_rng(0)))
    assert any(isinstance(m, Attention) for m in smallest_heads.modules())
    assert net.macs(space.smallest()) < net.macs(space.largest())


def test_importance_ordering_keeps_the_function_and_sorts_heads(built):
    _, net, x, _, space, _, _ = built
    with torch.no_grad():
        before = net(x)
    perms = net.reorder_channels()
    with torch.no_grad():
        assert (net(x) - before).abs().max().item() <= 1e-5
    heads = [g for g, grp in space.groups.items() if grp.unit == "heads"]
    assert any(not torch.equal(perms[g], torch.arange(4)) for g in heads)
    for g in heads:
        score = net.l1_importance(g)
        assert torch.all(score[:-1] >= score[1:] - 1e-5), g


def test_space_round_trips_to_yaml_with_heads(built):
    _, _, _, _, space, _, _ = built
    text = yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
    assert "unit: heads" in text and "unit: channels" not in text  # spaces without heads dump as before
    again = parse_space(yaml.safe_load(text))
    assert again == space and again.digest() == space.digest()


def test_onnx_export_with_dynamic_batch_and_sequence(built, tmp_path):
    _, net, _, _, space, _, seq_dims = built
    rng = np.random.default_rng(3)
    for i, cfg in enumerate([space.smallest(), space.sample(rng)]):
        path = tmp_path / f"{i}.onnx"
        res = export_subnet(net, cfg, path, sequence_dims=seq_dims)  # parity checked at batch 1, 7 (and half length)
        assert res.max_abs_diff <= 1e-4
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and all(dims[d].dim_param for d in seq_dims)
        assert int(read_metadata(path)["params"]) == net.num_params(cfg)


def test_a_subnet_trains_and_masks_are_honoured():
    model, x, _, space, _ = _build("encoder_post_norm")
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:, 12:] = True  # padding
    with torch.no_grad():
        ref = model.encoder(model.embed(x), src_key_padding_mask=mask)
    net = GraphSupernet(space, model)
    with torch.no_grad():
        got = net.body.encoder(net.body.embed(x), src_key_padding_mask=mask)
    assert (got - ref)[:, :12].abs().max().item() <= 1e-5  # the fused kernel leaves padded positions as it likes
    net.train()
    cfg = space.sample(np.random.default_rng(5))
    with net.select(cfg):
        net(x).square().mean().backward()
    attn = net.body.encoder.layers[0].block.self_attn
    assert isinstance(attn, ElasticMultiheadAttention) and attn.in_proj_weight.grad is not None


class OneAttention(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.q = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True, **kw)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.q(x)
        kv = x if self.attn.kdim != self.attn.embed_dim else h  # cross-attention over the raw features
        return self.head(self.attn(h, kv, kv, need_weights=False)[0].mean(1))


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"kdim": 8, "vdim": 8}, "kdim/vdim other than embed_dim"),
        ({"add_bias_kv": True}, "add_bias_kv or add_zero_attn"),
    ],
)
def test_attention_it_cannot_prune_is_frozen_with_the_reason(kw, reason):
    model = OneAttention(**kw).eval()
    analysis = analyze_model(model, torch.randn(1, 5, 8))
    assert any(reason in f.reason for f in analysis.frozen), analysis.frozen
    assert "attn" not in analysis.groups


def test_every_op_has_a_latency_key_and_keys_add_up(built):
    """Every op of these models gets a latency unit (attention and the MLP as ops timed as torch exports
    them, resized to the config), and the units' MACs are the subnet's."""
    from nasprune.latency.ops import all_ops, ops_for

    _, net, _, _, space, _, _ = built
    keys = set(all_ops(space))
    assert any("MultiheadAttention" in k.op for k in keys if k.kind == "op")
    for cfg in configs(space, 4):
        ops = ops_for(space, cfg)
        assert set(ops) <= keys
        assert sum(k.macs for k in ops) == net.macs(cfg)


def test_inspect_prints_head_and_ffn_groups(capsys):
    from nasprune.cli import main

    args = ["model", "inspect", "--model", "nasprune.models.vit_tiny:vit_tiny", "--input-shape", "1,28,28",
            "--num-classes", "10", "--no-latency"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for i in range(4):
        assert f"encoder.layers.encoder_layer_{i}.self_attention  MultiheadAttention" in out
        assert f"encoder.layers.encoder_layer_{i}.mlp.0" in out
    assert "1, 2, 3, 4" in out and "reshape to the fixed channel count 64" in out


class SequenceFirst(nn.Module):
    """torch's default layout for its encoder (batch_first=False): tokens first, batch second."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x).transpose(0, 1)).mean(dim=0))


def test_a_sequence_first_encoder_is_frozen_with_the_reason():
    analysis = analyze_model(SequenceFirst().eval(), torch.zeros(1, 16, 12))
    assert not analysis.groups and not analysis.sequences
    reasons = {f.reason for f in analysis.frozen}
    assert "MultiheadAttention over sequence-first tensors (batch_first=False)" in reasons
    assert "Linear over a tensor whose batch is dim 1 (sequence-first)" in reasons


class Unpinned(nn.Module):
    """No position parameter: the residual stream (the hidden size, with every LayerNorm on it) is a group."""

    def __init__(self, norm_first: bool = False):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x))[:, 0])  # the first token, as BERT's pooler reads it


@pytest.mark.parametrize("norm_first", [False, True])
def test_the_hidden_size_is_a_group_where_nothing_pins_it(norm_first, tmp_path):
    model = _randomize(Unpinned(norm_first)).eval()
    x = torch.randn(4, 16, 12, generator=torch.Generator().manual_seed(1))
    analysis = analyze_model(model, x[:1])
    assert analysis.group_size["embed"] == 32 and set(analysis.frozen_groups) == {"head"}
    space = space_from_analysis(analysis, "unpinned", "tests.graph.test_transformers:Unpinned", num_classes=3)
    with torch.no_grad():
        original = model(x)
    net = GraphSupernet(space, model)
    net.reorder_channels()  # the stream's channels move through every LayerNorm, q/k/v column and out_proj row
    with torch.no_grad():
        assert (net(x) - original).abs().max().item() <= 1e-5
    for cfg in configs(space, 3):
        with torch.no_grad(), net.select(cfg):
            ref = net(x)
        plain = extract(net, cfg)
        with torch.no_grad():
            assert (plain(x) - ref).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)
    cfg = space.config(space.largest().depths, {g: min(c) for g, c in space.width_layers().items()})
    assert export_subnet(net, cfg, tmp_path / "h.onnx", sequence_dims=(1,)).max_abs_diff <= 1e-4


def test_activation_importance_scores_heads_by_what_they_write():
    model, x, _, space, _ = _build("vit_tiny")
    with torch.no_grad():
        before = model(x)
    net = GraphSupernet(space, model)
    scores = net.activation_importance([x])
    heads = [g for g, grp in space.groups.items() if grp.unit == "heads"]
    assert all(len(scores[g]) == 4 and torch.all(scores[g] > 0) for g in heads)
    net.reorder_channels(scores)
    with torch.no_grad():
        assert (net(x) - before).abs().max().item() <= 1e-5
    after = net.activation_importance([x])
    assert all(torch.all(after[g][:-1] >= after[g][1:] - 1e-5) for g in heads)


SKIP_NORM = {"Add", "LayerNormalization", "SkipLayerNormalization", "SkipLayerNormalization+sum"}


@pytest.mark.parametrize("name", list(MODELS))
def test_units_are_the_kernels_onnxruntime_runs(name, tmp_path):
    """The kernels of a whole exported subnet are those of its units' graphs (less their producers and
    consumers), as for every other model; where onnxruntime fuses a residual add, the bias of the layer
    before it and a LayerNorm into one ``SkipLayerNormalization`` beside an attention (post-norm) or across
    a block's edge (ViT's last norm), the units time them apart: only those kernels may differ."""
    from collections import Counter

    import nasprune
    from nasprune.latency.graphs import (
        consumer_baseline,
        consumer_model,
        consumers_of,
        op_model,
        producer_model,
        producer_of,
    )
    from nasprune.latency.ops import ops_for
    from nasprune.latency.profile import deployable_supernet
    from tests.latency.test_ops import _kernels

    layout = {"ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}

    def kernels(model) -> Counter:
        return Counter(k for k in _kernels(model) if k not in layout)

    ref, kwargs, shape, _ = MODELS[name]
    space = nasprune.derive_space(build_model(ref, kwargs), shape, ref, name="t", model_kwargs=kwargs, max_choices=2)
    cfg = space.sample(np.random.default_rng(3))
    export_subnet(deployable_supernet(space), cfg, tmp_path / "s.onnx")
    parts: Counter = Counter()
    for key in ops_for(space, cfg):
        parts.update(kernels(op_model(key)))
        if (p := producer_of(key)) is not None:
            parts.subtract(kernels(producer_model(p)))
        for c in consumers_of(key):
            parts.subtract(kernels(consumer_model(c)))
            parts.update(kernels(producer_model(consumer_baseline(c))))
    whole = kernels(str(tmp_path / "s.onnx"))
    if name == "encoder_pre_norm":
        assert whole == +parts
    else:
        assert {k: v for k, v in whole.items() if k not in SKIP_NORM} == {
            k: v for k, v in (+parts).items() if k not in SKIP_NORM
        }


def test_torchvision_convnext_and_swin_get_their_mlp_neurons_and_layer_scale_freezes_the_stream():
    """Linears over channels-last tensors (after a permute) are analysed; ConvNeXt's per-channel
    ``layer_scale`` parameter, (C, 1, 1), fixes the stream it multiplies (it was let through before)."""
    for ref, n_mlp in [("torchvision:convnext_tiny", 18), ("torchvision:swin_t", 12)]:
        model = _randomize(build_model(ref, {"num_classes": 10})).eval()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        analysis = analyze_model(model, x[:1])
        assert len(analysis.groups) == n_mlp, ref
        if "convnext" in ref:
            assert analysis.frozen_groups["features.1.0.block.5"].startswith(
                "used with the fixed-size tensor 'features.1.0.layer_scale'"
            )
        space = space_from_analysis(analysis, "t", ref, num_classes=10)
        with torch.no_grad():
            original = model(x)
        net = GraphSupernet(space, model)
        with torch.no_grad():
            assert torch.equal(net(x), original)
        cfg = space.sample(np.random.default_rng(0))
        with torch.no_grad(), net.select(cfg):
            ref_out = net(x)
        plain = extract(net, cfg)
        with torch.no_grad():
            assert (plain(x) - ref_out).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)


def test_a_model_traced_again_keeps_its_digest():
    """fx attaches tensor constants to the model under growing numbers each trace (MaxViT's): the digest
    counts them by shape, so the space derived from a model fits that same model object."""
    model = build_model("torchvision:maxvit_t", {"num_classes": 10}).eval()
    x = torch.zeros(1, 3, 224, 224)
    assert analyze_model(model, x).digest == analyze_model(model, x).digest


class SplitHeadsAttention(nn.Module):
    """Attention written as Hugging Face's BERT writes it: separate q/k/v projections, each split into
    heads by ``view(B, S, -1, head_dim)``, scaled_dot_product_attention, heads merged back."""

    def __init__(self, d: int = 32, heads: int = 4, fixed_heads: bool = False):
        super().__init__()
        self.head_dim, self.split = d // heads, heads if fixed_heads else -1
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, s = x.shape[0], x.shape[1]
        q, k, v = (
            f(x).view(b, s, self.split, self.head_dim).transpose(1, 2) for f in (self.query, self.key, self.value)
        )
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, -1))


class SplitHeadsLayer(nn.Module):
    def __init__(self, fixed_heads: bool = False):
        super().__init__()
        self.attention, self.ln1 = SplitHeadsAttention(fixed_heads=fixed_heads), nn.LayerNorm(32)
        self.intermediate, self.output, self.ln2 = nn.Linear(32, 64), nn.Linear(64, 32), nn.LayerNorm(32)

    def forward(self, x):
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.output(F.gelu(self.intermediate(x))))


class SplitHeadsEncoder(nn.Module):
    def __init__(self, num_classes: int = 3, fixed_heads: bool = False):
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.layers = nn.Sequential(SplitHeadsLayer(fixed_heads), SplitHeadsLayer(fixed_heads))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.layers(self.embed(x))[:, 0])


def test_heads_split_by_view_are_groups_counted_in_heads(tmp_path):
    from nasprune.latency.ops import all_ops, ops_for

    model = _randomize(SplitHeadsEncoder()).eval()
    x = torch.randn(4, 16, 12, generator=torch.Generator().manual_seed(2))
    analysis = analyze_model(model, x[:1])
    for i in range(2):
        g = f"layers.{i}.attention.query"  # q, k, v and the output's columns: one group, in blocks of head_dim
        assert analysis.group_unit[g] == "heads" and analysis.group_block[g] == 8 and analysis.group_size[g] == 32
    ref = "tests.graph.test_transformers:SplitHeadsEncoder"
    space = space_from_analysis(analysis, "split_heads", ref, num_classes=3)
    assert space.groups["layers.0.attention.query"].widths == [1, 2, 3, 4]
    assert list(space.sequences) == ["layers.0-1"] and "embed" in space.groups  # nothing pins the hidden size
    with torch.no_grad():
        original = model(x)
    net = GraphSupernet(space, model)
    net.reorder_channels()  # heads move as whole blocks of q, k, v rows and output columns
    with torch.no_grad():
        assert (net(x) - original).abs().max().item() <= 1e-5
    keys = set(all_ops(space))
    for cfg in configs(space, 4):
        with torch.no_grad(), net.select(cfg):
            ref_out = net(x)
        plain = extract(net, cfg)  # the model's own view(b, s, -1, d) runs the kept heads
        with torch.no_grad():
            assert (plain(x) - ref_out).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)
        ops = ops_for(space, cfg)
        assert set(ops) <= keys and sum(k.macs for k in ops) == net.macs(cfg)
    cfg = space.config(space.largest().depths, {g: min(c) for g, c in space.width_layers().items()})
    assert export_subnet(net, cfg, tmp_path / "s.onnx", sequence_dims=(1,)).max_abs_diff <= 1e-4


def test_heads_split_into_a_fixed_count_are_frozen_with_the_reason():
    analysis = analyze_model(SplitHeadsEncoder(fixed_heads=True).eval(), torch.zeros(1, 16, 12))
    assert "layers.0.attention.query" not in analysis.groups
    assert any(f.reason == "reshape to the fixed number of heads 4" for f in analysis.frozen)
