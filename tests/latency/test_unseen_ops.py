"""Every op gets a latency unit (issue 28, point 2): models full of ops no hand-written unit describes
(``tests/latency/unseen_models.py``: GELU, SiLU, Mish, Hardswish, ELU, Softplus, LayerNorm, GroupNorm,
``AdaptiveAvgPool2d(2)`` before a Linear head, pools with unusual parameters, a (1, 3) kernel, splits,
products and concatenations of branches, squeeze-excite, attention over tokens, ``torch.arange``, ...)
get a space, a table and a prediction for every subnet. No assertion depends on timings being quiet:
they check keys, counts, the kernels onnxruntime runs, and that predictions are finite and positive."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import nasprune
from nasprune.errors import LatencyTableError
from nasprune.export import export_subnet
from nasprune.graph import GraphSupernet, build_model
from nasprune.graph.units import plan_for
from nasprune.latency import get_table
from nasprune.latency.graphs import (
    consumer_baseline,
    consumer_model,
    consumers_of,
    op_model,
    producer_model,
    producer_of,
)
from nasprune.latency.ops import OpKey, all_ops, ops_for
from nasprune.latency.profile import deployable_supernet, extend_table
from nasprune.registry import load_space
from tests.latency.conftest import FAST, every_config
from tests.latency.test_ops import _kernels
from tests.latency.unseen_models import MODELS

ROOT = Path(__file__).resolve().parents[2]


def _space(name: str, max_choices: int = 2):
    ref, kwargs, shape = MODELS[name]
    model = build_model(ref, kwargs)
    return nasprune.derive_space(model, shape, ref, name=name, model_kwargs=kwargs, max_choices=max_choices)


def _exported(key: OpKey) -> bool:
    return key.kind == "op" or (key.kind in ("conv", "linear") and bool(key.op))


# what each model must show among the ops timed as torch exports them (substrings of the keys' op texts)
EXPECTED = {
    "tabular": ["GELU", "mish", "LayerNorm", "softplus"],
    "small_cnn": [
        "GELU", "Mish", "count_include_pad=False", "kernel_size=(1, 3)", "ELU", "kernel_size=(3, 1)", "split",
        "softplus", "GroupNorm", "AdaptiveAvgPool2d(output_size=2)",
    ],
    "tokens": ["GELU", ".transpose", "softmax", "matmul", "AdaptiveAvgPool1d(output_size=2)"],
    "odd_ops": [
        "gelu", ".chunk", "torch.cat", "groups=4", "arange", "Upsample", "max_pool2d", "getitem", ".clamp", ".amax",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_every_op_gets_a_unit_and_keys_add_up(name):
    space = _space(name)
    ref, kwargs, _ = MODELS[name]
    net = GraphSupernet(space, build_model(ref, kwargs).eval())
    keys = set(all_ops(space))
    texts = " | ".join(k.op for k in keys if _exported(k))
    for op in EXPECTED[name]:
        assert op in texts, f"{op} has no unit in {name}: {texts}"
    configs = every_config(space)
    assert configs
    for cfg in configs[:40]:
        ops = ops_for(space, cfg)
        assert set(ops) <= keys  # every key a subnet runs is one the table measures
        assert sum(k.macs for k in ops) == net.macs(cfg)
        assert all(k.weights >= 0 for k in ops)
    plan = plan_for(space)
    assert plan.exported and all(u.name for u in plan.units)


@pytest.mark.parametrize("name", ["tabular", "small_cnn", "tokens"])
def test_unseen_ops_are_the_kernels_onnxruntime_runs(name, tmp_path):
    """The compute kernels of a whole exported subnet (after onnxruntime's fusions: GELU's nodes, a
    transpose and a scale into a matmul, SiLU into QuickGelu, ...) are those of its units' graphs less
    their producers and consumers: nothing runs that no unit times, and no unit times what does not run."""
    layout = {"ReorderInput", "ReorderOutput", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}

    def kernels(model) -> Counter:
        return Counter(k for k in _kernels(model) if k not in layout)

    space = _space(name)
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
    assert kernels(str(tmp_path / "s.onnx")) == +parts


@pytest.mark.parametrize("name", ["tabular", "small_cnn"])
def test_a_table_of_such_a_space_predicts_every_subnet(name, tmp_path):
    """Derive, save and load the space as a user would, build its table (small settings), predict every
    subnet; the exact minimum and maximum are those of the enumeration; the file round-trips."""
    path = tmp_path / f"{name}.yaml"
    _space(name).save(path)
    space = load_space(path)
    table = get_table(space, data_dir=tmp_path, n_fit=4, n_validate=2, settings=FAST)
    exported = [e.op for e in table.entries if _exported(e.op)]
    assert exported and not table.missing(space)
    assert len(table) == len(all_ops(space))
    preds = [table.predict(cfg) for cfg in every_config(space)]
    assert all(math.isfinite(p) and p > 0 for p in preds)
    assert min(preds) == pytest.approx(table.min_latency(), rel=1e-9)
    assert max(preds) == pytest.approx(table.max_latency(), rel=1e-9)
    again = get_table(space, data_dir=tmp_path, build=False)  # from the file, not rebuilt
    assert again == table and again.predict(space.largest()) == table.predict(space.largest())


def test_a_table_extends_to_new_widths_of_unseen_ops(tmp_path):
    """A space that gains widths: only the missing keys (among them exported ops at the new sizes) are
    timed, and every subnet of the wider space is predicted."""
    wide = _space("tabular", max_choices=3)
    data = wide.model_dump(mode="json")
    data["groups"]["stem.0"]["widths"] = data["groups"]["stem.0"]["widths"][-1:]
    narrow = type(wide).model_validate(data)
    table = get_table(narrow, data_dir=tmp_path, n_fit=0, n_validate=0, settings=FAST)
    missing = table.missing(wide)
    assert any(_exported(k) for k in missing)
    extended = extend_table(table, wide)
    assert not extended.missing(wide)
    preds = [extended.predict(cfg) for cfg in every_config(wide)]
    assert all(math.isfinite(p) and p > 0 for p in preds)


def test_keys_of_unseen_ops_are_the_same_in_another_process():
    """A table built in one process is read in others (the service's workers): the keys' op texts must
    not depend on the process (no addresses, no ids)."""
    names = ["small_cnn", "odd_ops"]
    here = {n: sorted(repr(k) for k in all_ops(_space(n))) for n in names}
    code = (
        "import json, sys\n"
        "from tests.latency.test_unseen_ops import _space\n"
        "from nasprune.latency.ops import all_ops\n"
        f"print(json.dumps({{n: sorted(repr(k) for k in all_ops(_space(n))) for n in {names!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_an_exported_op_runs_at_int8_too():
    from nasprune.latency.timing import feed_for, make_session
    from nasprune.quantize import quantize_for_timing

    space = _space("small_cnn")
    key = next(k for k in all_ops(space) if k.kind == "op" and "AdaptiveAvgPool2d" in k.op)
    sess = make_session(quantize_for_timing(op_model(key)), 1)
    (y,) = sess.run(None, feed_for(sess, 1))
    assert y.shape == (1, *key.outputs[0][1:])


def test_an_op_no_plan_registered_is_named():
    key = OpKey("op", 4, 4, op="NoSuchOp(k=1)", inputs=((1, 4),), outputs=((1, 4),))
    with pytest.raises(LatencyTableError, match=r"no torch module registered for op\(NoSuchOp\(k=1\)"):
        op_model(key)


def test_inspect_names_the_units_of_unseen_ops(capsys):
    from nasprune.cli import main

    rc = main(["model", "inspect", "--model", "tests.latency.unseen_models:small_cnn", "--input-shape", "1,12,12",
               "--num-classes", "4"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "hold ops without a hand-written unit, timed as torch exports them" in out
    assert "gn (GroupNorm+mish+AdaptiveAvgPool2d)" in out and "blocks.0.conv1 (Conv2d+GELU)" in out
