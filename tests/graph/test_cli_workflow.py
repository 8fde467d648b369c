"""Your own model from the terminal: derive a space that keeps its weights and dataset, see the latency
range, search it; every mistake refused before anything trains, naming the flag."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nasprune.cli import main
from nasprune.registry import load_space

REF = "nasprune.models.cnn1d:cnn1d"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "graph.md"


def _weights(path: Path, num_classes: int = 10) -> Path:
    from safetensors.torch import save_file

    from nasprune.models.cnn1d import cnn1d

    save_file(cnn1d(num_classes=num_classes).state_dict(), str(path))
    return path


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    """A model file beside the user (``mymodel.py``), whose factory takes no ``num_classes``, run from its folder."""
    (tmp_path / "mymodel.py").write_text(
        "import torch.nn as nn\n\n"
        "def make_model():\n"
        "    return nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))\n"
    )
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mymodel", None)


def test_inspect_saves_model_weights_and_dataset_and_prints_the_range_and_next_command(tmp_path, capsys):
    w = _weights(tmp_path / "cnn1d.safetensors")
    out_file = tmp_path / "spaces" / "my_cnn.yaml"
    out_file.parent.mkdir()
    rc = main(["model", "inspect", "--model", REF, "--dataset", "mnist1d", "--weights", str(w),
               "--save", str(out_file), "--data-dir", str(tmp_path / "data")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    data = yaml.safe_load(out_file.read_text())
    assert data["name"] == "my_cnn"  # named after the file, not the factory
    assert data["dataset"] == "mnist1d" and data["model"] == REF and data["model_kwargs"] == {"num_classes": 10}
    assert data["weights"] == "../cnn1d.safetensors" and re.fullmatch(r"[0-9a-f]{64}", data["weights_sha256"])
    space = load_space(out_file)
    assert Path(space.weights) == w.resolve() and space.input_shape == (1, 40)  # the dataset's shape
    # the layer behind a group's name, and what the columns mean
    assert re.search(r"stem\.0\s+Conv1d 1->32 k\d", out) and "inside block: the skippable block" in out
    m = re.search(r"latency on local-cpu: ([\d.]+) \.\. ([\d.]+) ms at batch 1 \(an estimate, measured now", out)
    assert m and 0 < float(m.group(1)) < float(m.group(2)), out
    lo, hi = map(float, re.search(r"suggested budget: ([\d.]+) \.\. ([\d.]+) ms", out).groups())
    assert float(m.group(1)) < lo < hi < float(m.group(2))
    budget = float(re.search(rf"next: nasprune search --space {re.escape(str(out_file))} --budget-ms ([\d.]+)", out)[1])
    assert lo <= budget <= hi
    assert f"or, in about a minute without training (tier 0): nasprune prune --space {out_file} --budget-ms" in out
    assert re.search(r"^fc\s+Linear 96->10\s+network output$", out, re.M), out  # kept at full width: which layer


def test_spaces_show_of_a_space_file_says_how_to_build_its_table_and_what_to_run(tmp_path, capsys):
    out_file = tmp_path / "c.yaml"
    assert main(["model", "inspect", "--model", REF, "--input-shape", "1,40", "--num-classes", "10", "--no-latency",
                 "--save", str(out_file)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "it records no dataset: pass --dataset to the search" in out
    assert "next:" not in out and "(--no-latency)" in out
    assert main(["spaces", "show", str(out_file), "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"'nasprune lut build --space {out_file}'" in out  # the file, not the space's name
    assert "an estimate, measured now" in out
    assert re.search(
        rf"next: nasprune search --space {re.escape(str(out_file))} --dataset NAME --budget-ms [\d.]+", out
    )


def test_a_factory_without_num_classes_is_called_without_it_and_checked_against_the_dataset(own_model, capsys):
    rc = main(["model", "inspect", "--model", "mymodel:make_model", "--dataset", "mnist1d", "--no-latency"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--model mymodel:make_model gives 3 outputs but --dataset mnist1d has 10 classes" in err
    rc = main(["model", "inspect", "--model", "mymodel:make_model", "--input-shape", "1,40", "--num-classes", "10",
               "--no-latency"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--num-classes 10 but --model mymodel:make_model gives 3 outputs (its factory takes no" in err
    # without a dataset it is derived as it is
    rc = main(["model", "inspect", "--model", "mymodel:make_model", "--input-shape", "1,40", "--no-latency",
               "--save", "s.yaml"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and re.search(r"\n0 +Conv1d 1->16 k3 ", out)  # an nn.Sequential's group '0' says what layer it is
    assert yaml.safe_load((own_model / "s.yaml").read_text())["model_kwargs"] == {}  # not passed: not recorded


def test_a_model_file_is_imported_from_the_folder_the_command_runs_in(tmp_path, monkeypatch):
    """Two folders with a ``mymodel.py`` each: a process that moves from one to the other builds the second's
    model, and the folder is on ``sys.path`` only while importing."""
    from nasprune.graph.models import build_model

    for name, width in (("a", 4), ("b", 6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mymodel.py").write_text(
            f"import torch.nn as nn\n\ndef make_model():\n    return nn.Linear(3, {width})\n"
        )
    try:
        monkeypatch.chdir(tmp_path / "a")
        assert build_model("mymodel:make_model", {}).out_features == 4
        monkeypatch.chdir(tmp_path / "b")
        assert build_model("mymodel:make_model", {}).out_features == 6
        assert str(tmp_path / "a") not in sys.path and str(tmp_path / "b") not in sys.path
    finally:
        sys.modules.pop("mymodel", None)


def test_the_default_space_name_says_what_the_model_is():
    from nasprune.graph.api import default_space_name

    assert default_space_name("mymodel:make_model") == "mymodel"
    assert default_space_name("pkg.models.resnet_small:build") == "resnet_small"
    assert default_space_name(REF) == "cnn1d" and default_space_name("torchvision:resnet18") == "resnet18"


def test_search_of_a_model_whose_output_does_not_fit_the_dataset_is_refused_before_training(own_model, capsys):
    rc = main(["search", "--model", "mymodel:make_model", "--dataset", "mnist1d", "--budget-ms", "0.1",
               "--data-dir", str(own_model / "data")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "gives 3 outputs but --dataset mnist1d has 10 classes" in err and "Traceback" not in err
    assert not (own_model / "data" / "checkpoints").exists()


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "cnn1d.yaml"
    assert main(["model", "inspect", "--model", REF, "--dataset", "mnist1d", "--no-latency", "--save", str(path)]) == 0
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "digits"], "--dataset: dataset 'digits' has samples of shape (64,) but space 'cnn1d'"),
        (["--dataset", "no_such_data"], "--dataset: unknown dataset 'no_such_data'"),
        (["--weights", "WRONG"], "tensor 'fc.weight' has shape (7, 96) in the weights but (10, 96)"),
        (["--weights", "missing.safetensors"], "--weights missing.safetensors: no such file"),
    ],
)
def test_search_space_file_checks_dataset_and_weights_before_anything_runs(space_file, tmp_path, capsys, extra,
                                                                            message):  # fmt: skip
    if "WRONG" in extra:
        extra = ["--weights", str(_weights(tmp_path / "w7.safetensors", num_classes=7))]
    capsys.readouterr()
    rc = main(["search", "--space", str(space_file), "--budget-ms", "0.1", "--data-dir", str(tmp_path / "d"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "d" / "checkpoints").exists() and not (tmp_path / "d" / "latency_tables").exists()


def test_search_of_a_space_without_a_dataset_asks_for_one(tmp_path, capsys):
    path = tmp_path / "nodata.yaml"
    assert main(["model", "inspect", "--model", REF, "--input-shape", "1,40", "--num-classes", "10", "--no-latency",
                 "--save", str(path)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["search", "--space", str(path), "--budget-ms", "0.1", "--data-dir", str(tmp_path / "d")]) == 2
    assert f"--space {path} records no dataset: pass --dataset NAME" in capsys.readouterr().err


def _commands(block_start: str) -> list[str]:
    text = DOCS.read_text()
    block = text[text.index(block_start) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("   #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_command_line_workflow_of_the_docs_runs_as_written(tmp_path):
    """docs/graph.md's derive -> show -> search block, each line a real command in a shell; the two slow
    steps (the supernet's training and the latency table) are done beforehand with tiny settings, and
    the search's trials and fine-tuning are cut."""
    from nasprune.latency import ProfileSettings, build_table, table_path
    from nasprune.train import TrainConfig, save_checkpoint, supernet_path, train_supernet

    commands = _commands("From the command line (local, trusted code")
    assert [c.split()[:3] for c in commands] == [
        ["python", "-c", '"from'], ["nasprune", "model", "inspect"], ["nasprune", "spaces", "show"],
        ["nasprune", "search", "--space"],
    ]  # fmt: skip
    root = tmp_path / "data"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NASPRUNE_DATA_DIR": str(root), "OMP_NUM_THREADS": "1"}  # fmt: skip

    def run(command: str, ok: tuple[int, ...] = (0,)) -> str:
        r = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode in ok, f"{command}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    for command in commands[:2]:
        run(command)
    space = load_space(tmp_path / "cnn1d.yaml")
    assert space.dataset == "mnist1d" and space.weights == str((tmp_path / "cnn1d.safetensors").resolve())
    res = train_supernet(space, TrainConfig(epochs=1, warmup_epochs=0, batch_size=128, max_shift=0), progress=False)
    save_checkpoint(res.supernet, supernet_path(space, root))
    quick = ProfileSettings(op_rounds=4, op_burst=5, e2e_rounds=4, e2e_burst=5, warmup=3)
    table = build_table(space, n_fit=4, n_validate=4, settings=quick)
    table.save(table_path(space.name, "local-cpu", root))
    shown = run(commands[2])
    assert "predicted by the latency table" in shown and "next: nasprune search --space cnn1d.yaml" in shown
    # cut: 4 trials, no fine-tuning and no tier 0 (the tier-0 tests cover it on such a space)
    search = commands[3].replace("--trials 60", "--trials 4 --finetune-steps 0 --tier0 off")
    budget = float(re.search(r"--budget-ms ([\d.]+)", search)[1])
    if not table.min_latency() < budget:  # a busy machine: the docs' budget must still be a sensible one here
        search = search.replace(f"--budget-ms {budget:g}", f"--budget-ms {table.max_latency():.4f}")
    out = run(search, ok=(0, 1))  # 1: no candidate verified within the budget on a busy machine
    assert "job " in out and "(* recommended" in out
    assert (tmp_path / "out" / "pareto.json").is_file()
    assert "wrote model.onnx" not in out or (tmp_path / "model.onnx").is_file()
    assert not (root / "spaces").exists()  # the space file was searched as it is, weights and dataset included
    assert shlex.split(commands[3])[-3:] == ["out/", "-o", "model.onnx"]


def test_a_derived_space_never_takes_a_registered_spaces_name(tmp_path, capsys):
    """'search --model nasprune.models.cnn1d:cnn1d --dataset mnist1d' would be 'cnn1d_mnist1d', the built-in
    space's name: the two would keep replacing each other's latency table."""
    import argparse

    from nasprune.cli.search import _derived_space

    args = argparse.Namespace(model=REF, dataset="mnist1d", weights=None)
    path = Path(_derived_space(args, tmp_path))
    assert path.name == "cnn1d_mnist1d_derived.yaml" and load_space(path).name == "cnn1d_mnist1d_derived"
    assert "derived space cnn1d_mnist1d_derived" in capsys.readouterr().out


def test_a_factory_that_fails_is_reported_with_how_it_was_called(tmp_path, monkeypatch, capsys):
    code = "def make_model(width):\n    return None\n\n\ndef boom(num_classes=10):\n    raise ValueError('no width')\n"
    (tmp_path / "broken_model.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(["model", "inspect", "--model", "broken_model:make_model", "--input-shape", "1,40", "--no-latency"])
        err = capsys.readouterr().err
        assert rc == 2 and "'broken_model:make_model' raised TypeError when called as make_model()" in err, err
        rc = main(["model", "inspect", "--model", "broken_model:boom", "--dataset", "mnist1d", "--no-latency"])
        err = capsys.readouterr().err
        assert rc == 2 and "raised ValueError when called as boom(num_classes=10): no width" in err, err
        assert "Traceback" not in err
    finally:
        sys.modules.pop("broken_model", None)


def test_search_of_a_space_whose_weights_moved_or_changed_is_refused_before_anything_runs(tmp_path, capsys):
    w = _weights(tmp_path / "w.safetensors")
    path = tmp_path / "s.yaml"
    assert main(["model", "inspect", "--model", REF, "--dataset", "mnist1d", "--weights", str(w), "--no-latency",
                 "--save", str(path)]) == 0  # fmt: skip
    capsys.readouterr()
    _weights(w)  # other weights under the same name
    args = ["search", "--space", str(path), "--budget-ms", "0.1", "--data-dir", str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--space {path}: {w.resolve()} is not the weights file it records (sha256 differs)" in err
    w.unlink()
    assert main(args) == 2
    assert f"records the weights {w.resolve()}, which are not there" in capsys.readouterr().err
    assert not (tmp_path / "d" / "latency_tables").exists()
