"""Data-parallel supernet training on Ray Train (``TorchTrainer``: gloo on CPU, nccl on GPU).

Every worker runs :func:`nasprune.train_loop.run_training` on its share of each batch (every
world-th example); the subnets of a step come from (seed, step) alone, so all workers train the
same architectures in a step and the averaged gradients belong to one architecture. Worker 0
validates and reports the whole training state as a Ray Train checkpoint after every epoch; a
worker that dies makes Ray Train restart the group (``FailureConfig(max_failures)``) from that
checkpoint. The result is the same checkpoint file as in-process training.

The run's Ray storage (``storage_path``) lies next to the checkpoint, which is right for a cluster
on one machine; on several machines it must be storage that every node sees (a shared file
system or an object store URI).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from nasprune.data import Dataset
from nasprune.ray_cluster import connect, disconnect
from nasprune.train_loop import (
    Dist,
    TrainConfig,
    TrainError,
    atomic_torch_save,
    read_train_state,
    run_training,
)

STATE_FILE = "train_state.pt"


def _use_gpu(ray, device: str, workers: int) -> bool:
    if device == "cpu":
        return False
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "auto":
        return gpus >= workers
    if gpus < workers:
        raise TrainError(
            f"--torch-device {device} with --workers {workers}: the Ray cluster has {gpus:g} GPUs; "
            "use --torch-device cpu, or fewer workers"
        )
    return True


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: resume from Ray's latest checkpoint (after a failure) or the given state."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    queue = config["queue"]
    state_file = Path(config["state_file"]) if config["state_file"] else None
    # Where to start: the furthest of Ray's latest registered checkpoint (after a worker failure),
    # the state file beside the checkpoint (when this node sees it: rank 0 writes it each epoch, and
    # Ray registers a report only when its controller next polls, which a worker dying at once
    # can beat) and the state the run was started with.
    found = [("saved state", config["state"])]
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            found.append(("Ray Train checkpoint", read_train_state(Path(d) / STATE_FILE)))
    if state_file is not None and state_file.is_file():
        found.append(("state file", read_train_state(state_file)))
    found = [(src, st) for src, st in found if st is not None]
    source, state = max(found, key=lambda f: (f[1]["epoch"], f[1]["step"]), default=("", None))

    def save_state(st: dict, rec: dict) -> None:
        metrics = {k: v for k, v in rec.items() if isinstance(v, int | float)}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        if state_file is not None and state_file.parent.is_dir():  # the same machine as the driver
            atomic_torch_save(st, state_file)
        with tempfile.TemporaryDirectory(prefix="nasprune-train-") as d:
            atomic_torch_save(st, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        queue.put(("epoch", rec))

    def notify(msg: str) -> None:
        queue.put(("note", f"{msg} [from the {source}, {world} workers]"))

    run_training(
        config["space"],
        config["cfg"],
        config["dataset"],
        config["weights"],
        device=device,
        state=state,
        notify=notify,
        dist=Dist(rank, world),
        save_state=save_state,
    )


def train_on_ray(
    space,
    cfg: TrainConfig,
    ds: Dataset,
    weights=None,
    workers: int = 2,
    device: str = "cpu",
    state: dict | None = None,
    state_file: Path | None = None,
    ray_address: str | None = None,
    max_failures: int = 3,
    on_epoch: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict:
    """Train on ``workers`` Ray Train workers; returns the final training state (as :func:`run_training`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue


    if cfg.batch_size < 2 * workers:
        raise TrainError(f"--batch-size {cfg.batch_size} is too small for {workers} workers (at least 2 per worker)")
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
    connect(ray, ray_address)
    storage = Path(tempfile.mkdtemp(prefix="nasprune-ray-train-", dir=state_file.parent if state_file else None))
    queue = None
    try:
        use_gpu = _use_gpu(ray, device, workers)
        queue = Queue(actor_options={"num_cpus": 0})
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "space": space,
                "cfg": cfg,
                "dataset": ds,
                "weights": str(weights) if weights is not None else None,
                "state": state,
                "state_file": str(state_file) if state_file else None,
                "use_gpu": use_gpu,
                "queue": queue,
            },
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(
                name=f"train-{space.name}-{uuid.uuid4().hex[:8]}",
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        stop = threading.Event()

        def drain() -> None:
            while not (stop.is_set() and queue.empty()):
                try:
                    kind, item = queue.get(timeout=0.5)
                except Exception:  # queue.Empty (Ray's own type), or the queue actor gone at shutdown
                    continue
                if kind == "epoch" and on_epoch:
                    on_epoch(item)
                elif kind == "note" and notify:
                    notify(item)

        reader = threading.Thread(target=drain, name="nasprune-train-progress", daemon=True)
        reader.start()
        try:
            result = trainer.fit()
        except Exception as e:
            raise TrainError(
                f"Ray Train failed after {max_failures} restarts (--max-failures): {type(e).__name__}: {str(e)[:500]}"
            ) from e
        finally:
            stop.set()
            reader.join(timeout=30)
        if result.checkpoint is None:
            raise TrainError("Ray Train finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            final = read_train_state(Path(d) / STATE_FILE)
        final["ray_restarts"] = _restarts(final)
        return final
    finally:
        if queue is not None:
            ray.kill(queue.actor)
        shutil.rmtree(storage, ignore_errors=True)
        disconnect(ray)


def _restarts(state: dict) -> int:
    return len(state.get("resumes", []))
