"""``nasprune demo``: the whole product in one command, on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole product in one command: serve, submit a job, fetch and run the model",
        description=(
            "1) prepares the space once (trains its supernet, measures this CPU's latency table; a few "
            "minutes the first time, cached in the data dir), 2) starts 'nasprune serve' on loopback with "
            "embedded defaults (SQLite, a local MLflow server), 3) submits a search job with a latency "
            "budget over HTTP and follows it, 4) prints the Pareto front, 5) downloads the recommended ONNX "
            "model and runs it with onnxruntime on the test images."
        ),
    )
    p.add_argument("--space", default="resnet_mnist", help="search space (%(default)s)")
    p.add_argument("--budget-ms", type=float, help="latency budget (default: 40%% into the space's latency range)")
    p.add_argument("--trials", type=int, default=60, help="search trials (%(default)s)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("NASPRUNE_DATA_DIR", ".nasprune")),
        help="data dir (%(default)s)",
    )
    p.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where the model goes (%(default)s)")
    from nasprune.cli._common import retired

    retired(p, "--output", "is now --output-dir (a folder; -o/--output names a file in every command)")
    p.add_argument("--keep-serving", action="store_true", help="leave the service running at the end")
    p.set_defaults(func=_run)


def _start_service(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NASPRUNE_DATA_DIR": str(data_dir)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nasprune", "serve", "--port", str(port), "--no-access-log"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _run(args) -> int:
    import numpy as np

    from nasprune.cli._common import front_table
    from nasprune.cli.jobs import mlflow_link
    from nasprune.client import Client
    from nasprune.data import load_dataset
    from nasprune.latency import get_table
    from nasprune.latency.timing import make_session, measure_model
    from nasprune.mlflow_server import free_port
    from nasprune.registry import load_space
    from nasprune.train import get_supernet

    space = load_space(args.space)
    data_dir = args.data_dir.resolve()
    print(f"[1/5] preparing '{space.name}' in {data_dir} (trained and measured once, then cached)")
    get_supernet(space, data_dir)
    lut = get_table(space, data_dir=data_dir, progress=True)
    lo, hi = lut.min_latency(), lut.max_latency()
    budget = args.budget_ms or round(lo + 0.4 * (hi - lo), 4)
    print(
        f"      subnets run in {lo:.4f}-{hi:.4f} ms on this CPU (predicted; table error: median "
        f"{lut.error.median_ape:.1f}% on {lut.error.n} held-out subnets)"
        if lut.error
        else ""
    )

    port = free_port()
    log = data_dir / "demo-serve.log"
    print(f"[2/5] starting the service on 127.0.0.1:{port} (log: {log})")
    proc = _start_service(data_dir, port, log)
    client = Client(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                print(log.read_text()[-2000:], file=sys.stderr)
                return 1
            try:
                if client.ready().get("status") == "ready":
                    break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)
        print("      " + "\n      ".join(line for line in log.read_text().splitlines() if "://" in line))

        print(f"[3/5] submitting: {space.name}, budget {budget} ms, {args.trials} trials")
        job_id = client.submit(space.name, budget, n_trials=args.trials)
        state = client.wait(job_id, progress=True)
        print(f"      job {job_id} {state['status']}; MLflow run: {mlflow_link(client.base_url, state)}")

        front = client.pareto(job_id)
        print("[4/5] Pareto front (validation accuracy vs predicted latency):")
        print(front_table(front["candidates"], front["recommended_id"], front["latency_budget_ms"]))
        if front.get("budget_use") is not None:
            print(f"      the recommended model uses {front['budget_use']:.0%} of the {budget} ms budget")

        path = client.download_model(job_id, args.output_dir / f"{space.name}-{job_id}.onnx")
        x, y = load_dataset(space.dataset).tensors("test")
        (logits,) = make_session(path).run(None, {"input": x.numpy()})
        acc = float(np.mean(logits.argmax(1) == y.numpy()))
        t = measure_model(path, threads=1, batch=1)
        print(
            f"[5/5] {path}: onnxruntime test accuracy {acc:.2%} on {len(y)} images, "
            f"{t.median_ms:.4f} ms per image (batch 1, 1 thread; budget {budget} ms)"
        )
        if not args.keep_serving:
            print("(the service and its MLflow UI stop now; 'nasprune demo --keep-serving' leaves them up)")
        else:
            print(f"the service keeps running at http://127.0.0.1:{port} (pid {proc.pid}); Ctrl-C to stop")
            proc.wait()
        return 0
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
