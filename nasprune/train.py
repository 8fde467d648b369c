"""Supernet training with weight sharing: the sandwich rule and in-place distillation.

Every step trains the largest subnet on the labels, then the smallest and ``n_random`` random
subnets on the largest one's soft outputs (in-place distillation), accumulating gradients into
the shared weights before one optimizer step. An optional warm start trains the largest network
alone first and then sorts its channels by importance, so narrow subnets start from the most
important channels.

:func:`train_supernet` runs the loop (:mod:`nasprune.train_loop`) in this process or on Ray Train
workers (:mod:`nasprune.train_ray`); this module also holds the default recipes, standalone
training (the ranking baseline) and checkpoints.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nasprune.data import Dataset, data_key, load_dataset, random_shift
from nasprune.errors import CheckpointError
from nasprune.evaluate import accuracy_of, recalibrate_bn
from nasprune.graph.supernet import GraphSupernet, extract
from nasprune.paths import checkpoints_dir
from nasprune.registry import create_supernet, load_space
from nasprune.space import SubnetConfig
from nasprune.train_loop import (
    Resumed,
    TrainConfig,
    TrainError,
    _batches,
    _sgd,
    check_state,
    epoch_order,
    read_train_state,
    resolve_device,
    resume_path,
    run_training,
    step_subnets,
)

__all__ = [
    "Resumed",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "checkpoint_id",
    "checkpoint_meta",
    "default_recipe",
    "epoch_order",
    "get_supernet",
    "load_checkpoint",
    "read_train_state",
    "resolve_device",
    "resume_path",
    "run_training",
    "save_checkpoint",
    "standalone_accuracy",
    "step_subnets",
    "supernet_path",
    "train_standalone",
    "train_supernet",
]

CHECKPOINT_FORMAT = "nasprune-supernet"
CHECKPOINT_VERSION = 1


def default_recipe(space) -> TrainConfig:
    """The recipe `get_supernet` trains with when no checkpoint exists yet, chosen by the input's
    kind (flat features, sequences or images), never by the model family."""
    if isinstance(space, str):
        space = load_space(space)
    if len(space.input_shape) == 1:  # flat features: small data, no translation to augment with
        return TrainConfig(epochs=40, warmup_epochs=5, batch_size=64, lr=0.05, max_shift=0)
    if len(space.input_shape) == 2:  # sequences (C, L): no image shift
        # 4 random subnets per step, not 2: on cnn1d_mnist1d (4,000 training sequences, 8 subnets
        # spread in MACs, scored on 20,000 fresh ones) Kendall tau against standalone training was
        # 0.84/0.91/0.84/0.91 over four seeds with 4 and 0.84/0.84/0.62/0.55 with 2; the mid-sized
        # subnets, rarely drawn, inherit 0.2-0.4 pt more (docs/results.md). ~35% more time per epoch.
        return TrainConfig(epochs=30, max_shift=0, n_random=4)
    # 30 epochs, not 15: at 15 the largest and smallest subnets (trained every step) are done, but
    # the random ones in between underfit (train accuracy ~98.0% vs 99.4%) and inherit ~1 pt less
    # than they reach standalone; at 30 they fit (99.0-99.6%) and rank like standalone training
    # (docs/results.md, benchmarks/supernet_quality.py). From a user's trained weights too: on
    # Fashion-MNIST dwse_net, 30 epochs at lr 0.05 beat 10 epochs at lr 0.05 on all 8 subnets
    # (+1.1-4.2 pt inherited) and 10 at lr 0.01 by 2-13 pt (benchmarks/supernet_start.py).
    return TrainConfig(epochs=30)


@dataclass
class TrainResult:
    supernet: GraphSupernet
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None
    resumed: list[dict] = field(default_factory=list)


def train_supernet(
    space,
    cfg: TrainConfig | None = None,
    dataset: Dataset | None = None,
    tracker=None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    resume: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    max_failures: int = 3,
) -> TrainResult:
    """Train a supernet of ``space`` (name, path or space); optionally save a checkpoint.

    The supernet starts from its model's weights: the factory's own (a fresh initialisation for the
    built-in models: then a warm-up trains the largest subnet alone before channels are sorted), or
    ``weights`` (a safetensors file of trained weights, or the space's own ``weights``). Trained
    weights skip the warm-up: channels are importance-sorted at once, and the original model is the
    distillation teacher of every subnet.

    With a ``checkpoint``, the whole training state (weights, optimizer, schedule, random states,
    position in the epoch, history) is written atomically after every epoch to
    :func:`resume_path` ``(checkpoint)``; a run started again with the same recipe (``resume``)
    continues from it and ends with the same weights as an uninterrupted run (bitwise on CPU). The
    state file is removed once the checkpoint is written.

    ``device``: ``cpu``, ``cuda`` or ``auto``; CUDA trains in mixed precision. ``workers`` > 1 trains
    data-parallel on Ray Train (:mod:`nasprune.train_ray`; ``ray_address`` names the cluster,
    ``max_failures`` how many worker failures the run survives) and writes the same checkpoint.
    ``on_epoch`` receives each epoch's record (``notify`` each message, e.g. where a run resumed);
    ``tracker`` (a :class:`nasprune.tracking.MlflowTracker`) logs params, per-epoch metrics and the
    checkpoint when given; training works the same without it.
    """
    space = load_space(space) if isinstance(space, str | Path) else space
    cfg = cfg or default_recipe(space)
    weights = weights if weights is not None else getattr(space, "weights", None)
    if weights is not None:
        cfg = cfg.model_copy(update={"warmup_epochs": 0})
    ds = dataset or load_dataset(space.dataset)
    state_file = resume_path(checkpoint) if checkpoint else None
    state = read_train_state(state_file) if state_file and resume else None
    if state is not None:
        check_state(state, space, cfg, state_file)
    run = tracker.start_training_run(space, cfg) if tracker else None
    t0 = time.perf_counter()

    def epoch_done(rec: dict) -> None:
        if run:
            tracker.log_epoch(run, {k: v for k, v in rec.items() if isinstance(v, int | float)})
        if on_epoch:
            on_epoch(rec)

    if workers > 1:
        from nasprune.train_ray import train_on_ray

        final = train_on_ray(
            space, cfg, ds, weights, workers=workers, device=str(device), state=state, state_file=state_file,
            ray_address=ray_address, max_failures=max_failures, on_epoch=epoch_done, notify=notify,
        )  # fmt: skip
    else:
        final = run_training(
            space, cfg, ds, weights, device=resolve_device(device), state=state, state_file=state_file,
            progress=progress, on_epoch=epoch_done, notify=notify,
        )  # fmt: skip
    net = create_supernet(space)
    net.load_state_dict(final["model"])
    net.eval()
    history = final["history"]
    result = TrainResult(net, history, time.perf_counter() - t0, resumed=final.get("resumes", []))
    if checkpoint:
        meta = {"recipe": cfg.model_dump(), "history": history, "resumes": final.get("resumes", [])}
        meta["workers"] = workers
        result.checkpoint = save_checkpoint(net, checkpoint, meta=meta)
        state_file.unlink(missing_ok=True)
    if run:
        tracker.end_training_run(run, result)
    return result


def train_standalone(
    space, subnet: SubnetConfig, cfg: TrainConfig | None = None, dataset: Dataset | None = None, progress: bool = False
) -> torch.nn.Module:
    """Train one architecture from scratch (no weight sharing), same recipe; the baseline for ranking.

    Takes the same number of epochs, batch size, schedule and augmentation as the supernet recipe.
    """
    space = load_space(space) if isinstance(space, str | Path) else space
    cfg = cfg or default_recipe(space)
    ds = dataset or load_dataset(space.dataset)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = extract(create_supernet(space), subnet).train()
    steps = cfg.epochs * len(_batches(ds, cfg, 0))
    opt, sched = _sgd(model.parameters(), cfg, steps)
    for epoch in tqdm(range(cfg.epochs), desc=f"standalone {subnet.key()}", disable=not progress):
        for x, y in _batches(ds, cfg, epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(
                model(random_shift(x, cfg.max_shift, gen)), y, label_smoothing=cfg.label_smoothing
            ).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
    # Same evaluation protocol as inherited weights: exact BN statistics on the calibration split.
    xc, _ = ds.tensors("calib")
    recalibrate_bn(model, [xc])
    return model.eval()


def standalone_accuracy(model: torch.nn.Module, ds: Dataset, split: str) -> float:
    x, y = ds.tensors(split)
    return accuracy_of(model, x, y)


# -- checkpoints -----------------------------------------------------------------------------------


def save_checkpoint(supernet: GraphSupernet, path: str | Path, meta: dict | None = None) -> Path:
    """Write the supernet's weights with the space's name and digest (atomically: tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "space": supernet.space.name,
        "space_digest": supernet.space.digest(),
        "state_dict": supernet.state_dict(),
        "meta": meta or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def checkpoint_id(path: str | Path) -> str:
    """sha256 of the checkpoint file (16 hex digits); evaluation caches key on it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_checkpoint(path: str | Path, space=None) -> GraphSupernet:
    """Load a checkpoint into a new supernet; refuses a checkpoint of another space or a damaged file.

    ``space`` defaults to the one recorded in the file (looked up in the registry).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (train one with 'nasprune train --space NAME')")
    try:
        payload = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise CheckpointError(
            f"checkpoint '{path}' is damaged or not a nasprune checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a nasprune supernet checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    space = load_space(payload["space"]) if space is None else (load_space(space) if isinstance(space, str) else space)
    if payload["space"] != space.name or payload["space_digest"] != space.digest():
        raise CheckpointError(
            f"checkpoint '{path}' was trained for space '{payload['space']}' (digest {payload['space_digest']}), "
            f"not '{space.name}' (digest {space.digest()}); retrain for this space"
        )
    net = create_supernet(space)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit space '{space.name}': {str(e)[:200]}") from None
    return net.eval()


def checkpoint_meta(path: str | Path) -> dict:
    payload = torch.load(io.BytesIO(Path(path).read_bytes()), map_location="cpu", weights_only=True)
    return payload.get("meta", {})


def supernet_path(space, data_dir: str | Path | None = None, epochs: int | None = None) -> Path:
    """Where the trained supernet of ``space`` is cached (the digest covers the weights it starts from); one
    trained for ``epochs`` other than the default recipe's is cached apart (``-e<epochs>``)."""
    length = f"-e{epochs}" if epochs is not None and epochs != default_recipe(space).epochs else ""
    return checkpoints_dir(data_dir) / f"{space.name}-{space.digest()}{data_key(space.dataset, data_dir)}{length}.pt"


def get_supernet(
    space,
    data_dir: str | Path | None = None,
    tracker=None,
    progress: bool = True,
    train: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
    device: str = "cpu",
    workers: int = 1,
    ray_address: str | None = None,
    epochs: int | None = None,
) -> tuple[GraphSupernet, Path]:
    """The trained supernet of ``space``: loaded from the data dir, or trained once with the default recipe
    (for ``epochs`` instead of the recipe's when given; such a supernet is cached apart).

    Training happens under a file lock, so concurrent workers wait for one training instead of
    starting several; a training that was killed resumes from its last epoch. ``on_epoch`` and
    ``notify`` see the training's progress (see :func:`train_supernet`, as are ``device``,
    ``workers`` and ``ray_address``). Returns the supernet and its checkpoint path.
    """
    import fcntl

    space = load_space(space) if isinstance(space, str | Path) else space
    path = supernet_path(space, data_dir, epochs)
    if path.is_file():
        return load_checkpoint(path, space), path
    if not train:
        raise CheckpointError(
            f"no trained supernet for '{space.name}' at {path}; run 'nasprune train --space {space.name}'"
        )
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            recipe = default_recipe(space)
            if epochs is not None:  # warm-up (largest only) keeps at least one sandwich epoch
                recipe = recipe.model_copy(update={"epochs": epochs, "warmup_epochs": min(recipe.warmup_epochs,
                                                                                          epochs - 1)})  # fmt: skip
            ds = load_dataset(space.dataset, data_dir=data_dir)  # a user dataset lies in this data dir
            train_supernet(
                space,
                recipe,
                ds,
                tracker=tracker,
                progress=progress,
                checkpoint=path,
                on_epoch=on_epoch,
                notify=notify,
                device=device,
                workers=workers,
                ray_address=ray_address,
            )
    return load_checkpoint(path, space), path
