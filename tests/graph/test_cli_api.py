"""`nasprune model inspect` and the public Python API, as a user calls them."""

from __future__ import annotations

import pytest
import torch
import yaml

import nasprune
from nasprune.cli import main
from nasprune.registry import create_supernet, load_space


def test_inspect_prints_groups_sequences_and_saves_a_loadable_space(capsys, tmp_path):
    out_file = tmp_path / "cnn1d.yaml"
    rc = main(["model", "inspect", "--model", "nasprune.models.cnn1d:cnn1d", "--input-shape", "1,40",
               "--num-classes", "10", "--save", str(out_file)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "10 channel groups, 3 depth sequences" in out
    assert "stages.1.1-2" in out and "network output" in out
    assert "frozen: nothing" in out
    space = load_space(out_file)  # the saved YAML is a space file like any other
    assert space.family == "graph" and len(space.groups) == 10
    # narrowing a choice by hand keeps it loadable and is honoured
    data = yaml.safe_load(out_file.read_text())
    data["groups"]["stem.0"]["widths"] = [16, 32]
    out_file.write_text(yaml.safe_dump(data))
    narrowed = load_space(out_file)
    assert narrowed.smallest().widths["stem.0"] == 16
    net = create_supernet(narrowed)
    assert net.num_params(narrowed.smallest()) < net.num_params(narrowed.largest())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-shape", "3,x"], "--input-shape '3,x' is not a list of integers"),
        (["--input-shape", "3"], "does not run on an input of shape (1, 3)"),
        (["--input-shape", "3,32,32", "--min-fraction", "0"], "--min-fraction 0.0 must be in (0, 1]"),
    ],
)
def test_inspect_errors_name_the_flag(capsys, argv, message):
    rc = main(["model", "inspect", "--model", "torchvision:resnet18", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_unknown_torchvision_model_lists_the_available_ones(capsys):
    assert main(["model", "inspect", "--model", "torchvision:resnet99", "--input-shape", "3,32,32"]) == 2
    assert "resnet18" in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_tensor_and_both_shapes(tmp_path, capsys):
    from safetensors.torch import save_file

    from nasprune.graph import build_model

    state = build_model("torchvision:resnet18", {"num_classes": 7}).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    rc = main(["model", "inspect", "--model", "torchvision:resnet18", "--num-classes", "10",
               "--input-shape", "3,32,32", "--weights", str(tmp_path / "w.safetensors")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "tensor 'fc.weight' has shape (7, 512) in the weights but (10, 512)" in err


def test_public_api_derive_convert_extract_export(tmp_path):
    from nasprune.models.cnn1d import cnn1d

    torch.manual_seed(0)
    model = cnn1d(num_classes=10).eval()
    x = torch.randn(3, 1, 40)
    with torch.no_grad():
        before = model(x)
    space = nasprune.derive_space(model, (1, 40), model_ref="nasprune.models.cnn1d:cnn1d",
                                  model_kwargs={"num_classes": 10})  # fmt: skip
    assert space.num_classes == 10
    supernet = nasprune.convert(model, space)
    with torch.no_grad():
        assert torch.equal(supernet(x), before)
    small = nasprune.extract(supernet, space.smallest())
    assert sum(p.numel() for p in small.parameters()) == supernet.num_params(space.smallest())
    res = nasprune.export_subnet(supernet, space.smallest(), tmp_path / "small.onnx")
    assert res.max_abs_diff <= 1e-4
    with pytest.raises(AttributeError):
        nasprune.no_such_thing  # noqa: B018


def test_the_python_example_of_the_docs_runs_as_written(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "graph.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/graph.md", "exec"), {})
    assert (tmp_path / "small.onnx").is_file()
    space = load_space(tmp_path / "cnn1d.yaml")
    assert space.dataset == "mnist1d" and space.model == "nasprune.models.cnn1d:cnn1d"
