"""``nasprune lut``: the build as users run it (a real subprocess, a real small table), the other
actions in-process, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from nasprune.cli import main
from nasprune.latency import LatencyTable
from tests.latency.conftest import TINY_MLP


def run(*args):
    return subprocess.run([sys.executable, "-m", "nasprune", *args], capture_output=True, text=True, timeout=300)


def test_build_show_predict_validate_list(tmp_path, capsys):
    space = tmp_path / "tiny_mlp.yaml"
    space.write_text(yaml.safe_dump(TINY_MLP))
    where = ["--space", str(space), "--data-dir", str(tmp_path / "data")]
    r = run("lut", "build", *where, "--fit", "3", "--validate", "2", "--op-rounds", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "building the latency table of 'tiny_mlp' on local-cpu: onnxruntime" in r.stdout
    assert "within +-10%" in r.stdout and "fastest" in r.stdout
    path = tmp_path / "data" / "latency_tables" / "tiny_mlp__local-cpu.json"
    table = LatencyTable.load(path)
    assert table.error.n == 2 and table.correction.fit_subnets == 3
    # how busy the machine was, measured over the build and said with the table
    load = table.build_load
    assert load is not None and load.cpus >= 1 and 0 < load.seconds <= table.build_seconds + 1
    assert f"machine    {load.describe()}" in r.stdout

    assert main(["lut", "show", *where, "--entries"]) == 0
    out = capsys.readouterr().out
    assert "linear(c_in=16, c_out=8, act=relu)" in out and "fingerprint" in out

    cfg = json.dumps(table.space.largest().model_dump())
    assert main(["lut", "predict", "--table", str(path), "--config", cfg]) == 0
    assert f"predicted {table.predict(table.space.largest()):.4f} ms on local-cpu" in capsys.readouterr().out

    assert main(["lut", "validate", *where, "-n", "2", "--no-progress"]) == 0
    assert "median APE" in capsys.readouterr().out
    assert LatencyTable.load(path).error.validated_at >= table.error.validated_at

    assert main(["lut", "list", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "tiny_mlp" in out and "local-cpu" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lut", "show", "--space", "mlp_digits"), "no usable fp32 latency table for space 'mlp_digits'"),
        (("lut", "show", "--space", "mlp_digits", "--device", "pi5"), "build it on that device"),
        (("lut", "build", "--space", "mlp_digits", "--threads", "2"), "fixed at 1 thread and batch 1"),
        (("lut", "show"), "--space NAME"),
        (("lut", "show", "--table", "{bad}"), "schema version 7"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text('{"schema_version": 7}')
    args = [a.replace("{bad}", str(tmp_path / "bad.json")) for a in args]
    assert main([*args, *(["--data-dir", str(tmp_path)] if "--table" not in args else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_show_says_when_a_table_is_coarse(mlp_table, tmp_path, capsys):
    """A table that predicts its held-out subnets coarsely says so, what that costs and where to read
    why; a good one does not (the error report decides, on enough subnets)."""
    from nasprune.latency.table import ErrorReport

    def shown(**error) -> str:
        report = ErrorReport(n=20, p90_ape=9.0, max_ape=20.0, spearman=0.9, validated_at="2026-12-03", **error)
        path = mlp_table.with_error(report).save(tmp_path / "t.json")
        assert main(["lut", "show", "--table", str(path)]) == 0
        return " ".join(capsys.readouterr().out.split())  # the hint is wrapped over lines

    for coarse in ({"median_ape": 6.0, "within_10": 0.95}, {"median_ape": 3.0, "within_10": 0.8}):
        out = shown(**coarse)
        assert "coarse for this space" in out and "Where a table of units holds" in out
    assert "coarse for this space" not in shown(median_ape=2.0, within_10=1.0)
    assert not ErrorReport(
        n=3, median_ape=9.0, p90_ape=9.0, max_ape=9.0, within_10=0.0, spearman=None, validated_at="x"
    ).coarse()  # too few subnets to judge
