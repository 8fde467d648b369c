"""``nasprune search`` as a user runs it: a real subprocess on a prepared data dir (trained supernet and table)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_cli_search_logs_to_a_local_mlflow_store_and_reports_in_plain_lines(prepared, budget, tmp_path):
    from mlflow import MlflowClient

    root, table = prepared
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "nasprune", "search", "--space", "mlp_digits", "--budget-ms", f"{budget:.6f}",
         "--trials", "6", "--finetune-epochs", "0", "--data-dir", str(root), "--output-dir", str(out),
         "-o", str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr  # 1: no candidate verified within the budget on a busy machine
    job_id = re.match(r"job ([0-9a-f]+): mlp_digits on local-cpu", r.stdout).group(1)
    assert len(job_id) == 32  # the service's id format
    assert (out / "pareto.json").is_file() and "(* recommended" in r.stdout
    if r.returncode == 0:  # -o: the recommended model, as submit/fetch/prune write it
        assert (tmp_path / "m.onnx").read_bytes() == (out / "model.onnx").read_bytes()

    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr  # not a terminal: plain lines
    assert f"latency range of mlp_digits on local-cpu: {table.min_latency():.4g} .. {table.max_latency():.4g} ms" in (
        r.stderr
    )
    first_search = next(i for i, line in enumerate(lines) if line.startswith("searching: "))
    assert not any(line.startswith("building latency table") for line in lines[first_search:])
    assert "warning: the latency budget" not in r.stderr  # inside the range

    store = f"sqlite:///{(root / 'mlflow-local' / 'mlflow.db').resolve()}"
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert f"MLflow run {run_id}: browse with 'mlflow ui --backend-store-uri {store}'" in r.stdout
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(str((root / "mlflow-local" / "artifacts").resolve()))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()  # nothing in the cwd


@pytest.mark.slow
def test_cli_search_sets_the_training_length(prepared, budget, tmp_path, capsys):
    from nasprune.cli import main
    from nasprune.registry import load_space
    from nasprune.train import supernet_path

    root, _ = prepared
    rc = main(["search", "--space", "mlp_digits", "--budget-ms", f"{budget:.6f}", "--trials", "2",
               "--train-epochs", "1", "--finetune-steps", "0", "--data-dir", str(root),
               "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert rc in (0, 1), capsys.readouterr().err  # 1: nothing verified within the budget on a busy machine
    assert supernet_path(load_space("mlp_digits"), root, 1).is_file()  # trained for 1 epoch, cached apart
    assert '"train_epochs": 1' in (tmp_path / "out" / "result.json").read_text()
