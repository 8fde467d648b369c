"""Supernet training with weight sharing: the sandwich rule and in-place distillation.

Every step trains the largest subnet on the labels, then the smallest and ``n_random`` random
subnets on the largest one's soft outputs (in-place distillation), accumulating gradients into
the shared weights before one optimizer step. An optional warm start trains the largest network
alone first and then sorts its channels by importance, so narrow subnets start from the most
important channels.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from nasprune.data import Dataset, load_dataset, random_shift
from nasprune.elastic.supernet import Supernet, extract
from nasprune.errors import CheckpointError
from nasprune.evaluate import Evaluator, accuracy_of, recalibrate_bn
from nasprune.registry import create_supernet, load_space
from nasprune.space import SubnetConfig

CHECKPOINT_FORMAT = "nasprune-supernet"
CHECKPOINT_VERSION = 1


class TrainConfig(BaseModel):
    """A training recipe; unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(15, ge=1)
    warmup_epochs: int = Field(2, ge=0, description="largest-only epochs before importance ordering")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    n_random: int = Field(2, ge=0, description="random subnets per step besides largest and smallest")
    max_shift: int = Field(2, ge=0, description="random translation augmentation in pixels (images only)")
    seed: int = 0


def default_recipe(space) -> TrainConfig:
    """The recipe `get_supernet` trains with when no checkpoint exists yet, chosen by the input's
    kind (flat features, sequences or images), never by the model family."""
    if isinstance(space, str):
        space = load_space(space)
    if len(space.input_shape) == 1:  # flat features: small data, no translation to augment with
        return TrainConfig(epochs=40, warmup_epochs=5, batch_size=64, lr=0.05, max_shift=0)
    if len(space.input_shape) == 2:  # sequences (C, L): no image shift
        return TrainConfig(epochs=30, max_shift=0)
    # 30 epochs, not 15: at 15 the largest and smallest subnets (trained every step) are done, but
    # the random ones in between underfit (train accuracy ~98.0% vs 99.4%) and inherit ~1 pt less
    # than they reach standalone; at 30 they fit (99.0-99.6%) and rank like standalone training
    # (docs/results.md, benchmarks/supernet_quality.py).
    return TrainConfig(epochs=30)


@dataclass
class TrainResult:
    supernet: Supernet
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    checkpoint: Path | None = None


def _kd_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    return -(soft_targets * F.log_softmax(logits, 1)).sum(1).mean()


def _sgd(params, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return opt, sched


def _batches(ds: Dataset, cfg: TrainConfig, epoch: int):
    return ds.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)


def train_supernet(
    space,
    cfg: TrainConfig | None = None,
    dataset: Dataset | None = None,
    tracker=None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    weights: str | Path | None = None,
) -> TrainResult:
    """Train a supernet of ``space`` (name, path or space); optionally save a checkpoint.

    The supernet starts from its model's weights: the factory's own (a fresh initialisation for the
    built-in models: then a warm-up trains the largest subnet alone before channels are sorted), or
    ``weights`` (a safetensors file of trained weights, or the space's own ``weights``). Trained
    weights skip the warm-up: channels are importance-sorted at once, and the original model is the
    distillation teacher of every subnet.
    ``tracker`` (a :class:`nasprune.tracking.MlflowTracker`) logs params, per-epoch metrics and the
    checkpoint when given; training works the same without it.
    """
    space = load_space(space) if isinstance(space, str | Path) else space
    cfg = cfg or default_recipe(space)
    ds = dataset or load_dataset(space.dataset)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher = None
    weights = weights if weights is not None else getattr(space, "weights", None)
    if weights is not None:
        teacher = create_supernet(space, weights).eval()  # the original model's function, frozen
        for p in teacher.parameters():
            p.requires_grad_(False)
        cfg = cfg.model_copy(update={"warmup_epochs": 0})
    net = create_supernet(space, weights).train()
    if weights is not None:
        net.reorder_channels()
    steps_per_epoch = len(_batches(ds, cfg, 0))
    opt, sched = _sgd(net.parameters(), cfg, cfg.epochs * steps_per_epoch)
    largest, smallest = space.largest(), space.smallest()
    run = tracker.start_training_run(space, cfg) if tracker else None
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"train {space.name}", disable=not progress, unit="step")
    for epoch in range(cfg.epochs):
        if epoch == cfg.warmup_epochs and cfg.warmup_epochs > 0:
            net.reorder_channels()
            opt.state.clear()  # momentum buffers belong to the old channel order
        sandwich = epoch >= cfg.warmup_epochs
        totals = {"loss": 0.0, "correct": 0, "seen": 0}
        for x, y in _batches(ds, cfg, epoch):
            x = random_shift(x, cfg.max_shift, gen)
            opt.zero_grad(set_to_none=True)
            with net.select(largest):
                out = net(x)
                loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            if sandwich:
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x), 1)
                else:
                    soft = F.softmax(out.detach(), 1)
                for sub in [smallest, *(space.sample(rng) for _ in range(cfg.n_random))]:
                    with net.select(sub):
                        _kd_loss(net(x), soft).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            totals["loss"] += loss.item() * len(y)
            totals["correct"] += (out.argmax(1) == y).sum().item()
            totals["seen"] += len(y)
            bar.update()
            bar.set_postfix(
                loss=f"{totals['loss'] / totals['seen']:.3f}",
                acc=f"{totals['correct'] / totals['seen']:.3f}",
                phase="sandwich" if sandwich else "warmup",
            )
        rec = {
            "epoch": epoch + 1,
            "train_loss": totals["loss"] / totals["seen"],
            "train_acc_largest": totals["correct"] / totals["seen"],
            "lr": sched.get_last_lr()[0],
        }
        ev = Evaluator(net, ds)
        rec["val_acc_largest"] = ev.accuracy(largest, "val")
        rec["val_acc_smallest"] = ev.accuracy(smallest, "val")
        net.train()
        history.append(rec)
        if run:
            tracker.log_epoch(run, rec)
    bar.close()
    net.eval()
    result = TrainResult(net, history, time.perf_counter() - t0)
    if checkpoint:
        result.checkpoint = save_checkpoint(net, checkpoint, meta={"recipe": cfg.model_dump(), "history": history})
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


def save_checkpoint(supernet: Supernet, path: str | Path, meta: dict | None = None) -> Path:
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


def load_checkpoint(path: str | Path, space=None) -> Supernet:
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


def supernet_path(space, data_dir: str | Path | None = None) -> Path:
    """Where the trained supernet of ``space`` is cached (the digest covers the weights it starts from)."""
    from nasprune.data import data_key
    from nasprune.paths import checkpoints_dir

    return checkpoints_dir(data_dir) / f"{space.name}-{space.digest()}{data_key(space.dataset, data_dir)}.pt"


def get_supernet(
    space,
    data_dir: str | Path | None = None,
    tracker=None,
    progress: bool = True,
    train: bool = True,
) -> tuple[Supernet, Path]:
    """The trained supernet of ``space``: loaded from the data dir, or trained once with the default recipe.

    Training happens under a file lock, so concurrent workers wait for one training instead of
    starting several. Returns the supernet and its checkpoint path.
    """
    import fcntl

    space = load_space(space) if isinstance(space, str | Path) else space
    path = supernet_path(space, data_dir)
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
            ds = load_dataset(space.dataset, data_dir=data_dir)  # a user dataset lies in this data dir
            train_supernet(space, recipe, ds, tracker=tracker, progress=progress, checkpoint=path)
    return load_checkpoint(path, space), path
