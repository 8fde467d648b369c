"""The CLI as users run it: a real subprocess, exit codes, one-line errors (never a traceback)."""

import json
import subprocess
import sys

import onnx


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nasprune", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_spaces_list_and_show():
    r = run("spaces", "list")
    assert r.returncode == 0, r.stderr
    assert "resnet_mnist" in r.stdout and "mlp_digits" in r.stdout
    r = run("spaces", "show", "resnet_mnist")
    assert r.returncode == 0, r.stderr
    assert "stages.2.2.conv1" in r.stdout and "largest" in r.stdout and "75,866,112" in r.stdout


def test_export_config_file(tmp_path):
    cfg = {"depths": {"blocks.0-2": 2}, "widths": {"stem.0": 32, "blocks.0.fc1": 16, "blocks.1.fc1": 24}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    r = run("export", "--space", "mlp_digits", "--config", str(tmp_path / "cfg.json"), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["nasprune.config"])["widths"] == cfg["widths"]


def test_errors_are_one_line_and_nonzero(tmp_path):
    cases = [
        (("spaces", "show", "nope"), "unknown search space 'nope'"),
        (
            (
                "export",
                "--space",
                "mlp_digits",
                "--config",
                '{"depths": {"blocks.0-2": 9}, "widths": {}}',
                "-o",
                str(tmp_path / "x.onnx"),
            ),
            "depths.blocks.0-2: 9 is not allowed (allowed: [0, 1, 2, 3])",
        ),
        (
            ("export", "--space", "mlp_digits", "--config", str(tmp_path / "missing.json"), "-o", "x.onnx"),
            "does not exist",
        ),
        (("export", "--space", "mlp_digits", "--config", "{not json", "-o", "x.onnx"), "not valid JSON"),
        (
            ("search", "--space", "mlp_digits", "--budget-ms", "1", "--trials", "0", "--finetune-epochs", "-3"),
            "--trials: Input should be greater than or equal to 1; --finetune-epochs: Input should be greater",
        ),
    ]
    for args, needle in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
