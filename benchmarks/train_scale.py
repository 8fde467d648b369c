"""What resumable and data-parallel supernet training cost and buy (issue 17).

Two parts:

- ``resume``: ``nasprune train`` (mlp_digits, 3 epochs) is stopped at a chosen step of its second
  epoch (a test hook pauses it there; see ``tests/train/hooks.py``), killed with SIGKILL and run
  again; it resumes from the state saved at the end of its last finished epoch. Reported per kill:
  the steps lost (steps trained since that epoch ended, at most one epoch's worth) and the largest
  absolute weight difference between the resumed run's checkpoint and an uninterrupted run's
  (same seed, same recipe, same thread count).
- ``scale``: one supernet training of the largest built-in space (resnet_mnist) on the first
  ``--train-images`` training images for ``--epochs`` epochs, in-process (torch's default threads,
  and 1 thread: a Ray Train worker with one CPU runs 1 thread) and on Ray Train with 1 and 2 CPU
  workers (a local Ray started once, its start-up reported apart). Reported: wall time
  (including Ray Train's worker start-up), training samples/s over the epochs' training time
  (validation excluded), and the validation accuracy of the largest and smallest subnets after the
  same epochs. Data-parallel workers split each batch (the global batch is the same), so the
  accuracies should agree within noise; the speed-up is bounded by the machine's cores.

    .venv/bin/python benchmarks/train_scale.py [--train-images 768] [--epochs 1] [--skip-scale]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.train.hooks
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write

from nasprune.cli._common import table as grid

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RESUME_ARGS = ["--space", "mlp_digits", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "64"]
RESUME_ARGS += ["--n-random", "1", "--seed", "7"]
STEPS_PER_EPOCH = 17  # digits: 1,077 training images in batches of 64


def _train(out: Path, root: Path, env: dict, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nasprune", "train", *RESUME_ARGS, "-o", str(out), "--data-dir", str(root)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def resume_part(root: Path) -> list[dict]:
    import torch

    from nasprune.train import load_checkpoint
    from tests.train.hooks import pause_site

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = root / "ref.pt"
    t0 = time.perf_counter()
    out, _ = _train(ref, root, env).communicate()
    ref_s = time.perf_counter() - t0
    reference = load_checkpoint(ref).state_dict()
    rows = []
    for k in (2, STEPS_PER_EPOCH - 1):  # early and late in the second epoch
        kill_at = STEPS_PER_EPOCH + k
        ckpt, mark = root / f"killed{k}.pt", root / f"pause{k}.pid"
        site = pause_site(root / "site")
        pause_env = {**env, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        pause_env |= {"NASPRUNE_TEST_PAUSE_STEP": str(kill_at), "NASPRUNE_TEST_PAUSE_MARK": str(mark)}
        proc = _train(ckpt, root, pause_env)
        while not mark.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the training ended before step {kill_at}: {proc.stdout.read()[-2000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.perf_counter()
        out, _ = _train(ckpt, root, env).communicate()
        resumed_s = time.perf_counter() - t0
        m = re.search(r"resuming from epoch (\d+)/\d+, step (\d+)/\d+ \(global step (\d+)", out)
        if m is None:
            raise RuntimeError(f"the second run did not resume: {out[-2000:]}")
        resumed_at = int(m.group(3))
        got = load_checkpoint(ckpt).state_dict()
        diff = max(float((got[n].double() - reference[n].double()).abs().max()) for n in reference)
        equal = all(torch.equal(got[n], reference[n]) for n in reference)
        rows.append({
            "killed_at_step": kill_at,
            "resumed_at_step": resumed_at,
            "steps_lost": kill_at - resumed_at,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "max_abs_weight_diff": diff,
            "bitwise_equal": equal,
            "resumed_run_s": round(resumed_s, 1),
            "uninterrupted_run_s": round(ref_s, 1),
        })  # fmt: skip
        print(f"kill at step {kill_at}: resumed at {resumed_at}, lost {kill_at - resumed_at}, "
              f"max |dw| {diff:.3g}, bitwise equal {equal}", flush=True)  # fmt: skip
    return rows


def scale_part(n_images: int, epochs: int, batch_size: int) -> tuple[list[dict], float]:
    import ray
    import torch

    from nasprune.data import load_dataset
    from nasprune.registry import load_space
    from nasprune.train import TrainConfig, train_supernet

    space = load_space("resnet_mnist")
    ds = load_dataset(space.dataset)
    splits = {**ds.splits, "train": tuple(t[:n_images] for t in ds.splits["train"])}
    small = type(ds)(ds.name, ds.input_shape, ds.num_classes, splits, ds.info)
    cfg = TrainConfig(epochs=epochs, warmup_epochs=0, batch_size=batch_size, seed=0)
    rows = []
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        runs = (
            ("in-process", 1, None),
            ("in-process-1-thread", 1, 1),
            ("ray-train-1", 1, None),
            ("ray-train-2", 2, None),
        )
        for label, workers, threads in runs:
            print(f"{label}: training ...", flush=True)
            default_threads = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            t0 = time.perf_counter()
            if label == "ray-train-1":  # one Ray Train worker: train_on_ray directly (train_supernet goes in-process)
                from nasprune.train_ray import train_on_ray

                final = train_on_ray(space, cfg, small, workers=1)
                history = final["history"]
            else:
                history = train_supernet(space, cfg, small, progress=False, workers=workers).history
            wall = time.perf_counter() - t0
            torch.set_num_threads(default_threads)
            train_s = sum(h["train_seconds"] for h in history)
            rows.append({
                "run": label,
                "workers": workers,
                "torch_threads": 1 if label.startswith("ray") else threads or default_threads,  # Ray: 1 per CPU
                "wall_s": round(wall, 1),
                "train_s": round(train_s, 1),
                "samples_per_s": round(n_images * epochs / train_s, 1),
                "val_acc_largest": history[-1]["val_acc_largest"],
                "val_acc_smallest": history[-1]["val_acc_smallest"],
                "train_loss": history[-1]["train_loss"],
            })  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    return rows, ray_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=768, help="training images of resnet_mnist used (scale)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the scale runs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip-scale", action="store_true", help="only the resume part")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nasprune-train-scale-") as tmp:
        resume = resume_part(Path(tmp))
    print()
    print(grid([[r["killed_at_step"], r["resumed_at_step"], r["steps_lost"], f"{r['max_abs_weight_diff']:.3g}",
                 r["bitwise_equal"]] for r in resume],
               ["killed at step", "resumed at step", "steps lost", "max |dw|", "bitwise equal"]))  # fmt: skip
    scale, ray_start = ([], None) if args.skip_scale else scale_part(args.train_images, args.epochs, args.batch_size)
    if scale:
        print(f"\nresnet_mnist, {args.train_images} training images, {args.epochs} epoch(s), batch {args.batch_size}; "
              f"local Ray start {ray_start:.1f} s")  # fmt: skip
        print(grid([[r["run"], r["wall_s"], r["train_s"], r["samples_per_s"], f"{r['val_acc_largest']:.1%}",
                     f"{r['val_acc_smallest']:.1%}"] for r in scale],
                   ["run", "wall s", "train s", "samples/s", "val largest", "val smallest"]))  # fmt: skip
    load_after = os.getloadavg()
    write(
        "train_scale",
        {
            "load_average_before": load,
            "load_average_after": load_after,
            "resume": resume,
            "scale": {
                "space": "resnet_mnist",
                "train_images": args.train_images,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "ray_start_s": ray_start,
                "runs": scale,
            },
        },
    )


if __name__ == "__main__":
    main()
