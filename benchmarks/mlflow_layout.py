"""What the MLflow layout costs a job at its end: logging the delivered ONNX as a logged model
(signature, input example, metadata) and registering it with its alias (``log_onnx_model``), against
a real ``mlflow server`` on loopback, next to the plain artifact upload it replaced.

    .venv/bin/python benchmarks/mlflow_layout.py [--repeats 8]

Uses an mlp_digits subnet with untrained weights (the cost does not depend on them). Prints figures
and writes ``benchmarks/results/mlflow_layout.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _util import write


def _summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from nasprune.data import load_dataset
    from nasprune.export import export_subnet
    from nasprune.mlflow_server import mlflow_server
    from nasprune.registry import create_supernet, load_space
    from nasprune.tracking import get_or_create_experiment, log_onnx_model

    space = load_space("mlp_digits")
    supernet = create_supernet(space).eval()
    example = load_dataset("digits").tensors("test")[0][:2].numpy()
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp) / "mlflow") as srv:
        onnx_path = Path(tmp) / "model.onnx"
        export_subnet(supernet, space.largest(), onnx_path)
        client = MlflowClient(srv.url)
        exp = get_or_create_experiment(client, "bench/mlflow_layout")
        logged, plain = [], []
        for _ in range(args.repeats):
            run = client.create_run(exp).info.run_id
            t0 = time.perf_counter()
            log_onnx_model(client, exp, run, onnx_path, "bench-mlp_digits", example)
            logged.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            client.log_artifact(run, str(onnx_path), "model")
            plain.append((time.perf_counter() - t0) * 1000)
        size = onnx_path.stat().st_size
    result = {
        "log_onnx_model": _summary(logged),
        "plain_artifact": _summary(plain),
        "repeats": args.repeats,
        "onnx_bytes": size,
        "load_avg": [round(v, 2) for v in os.getloadavg()],
    }
    print(
        f"logged + registered model: median {result['log_onnx_model']['median_ms']} ms "
        f"(min {result['log_onnx_model']['min_ms']}, max {result['log_onnx_model']['max_ms']}); "
        f"plain artifact: median {result['plain_artifact']['median_ms']} ms; "
        f"{args.repeats} repeats, load average {result['load_avg']}"
    )
    write("mlflow_layout", result)


if __name__ == "__main__":
    main()
