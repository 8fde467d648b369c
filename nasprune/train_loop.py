"""The training loop of one worker: the sandwich rule, in-place distillation, resumable state.

Every step trains the largest subnet on the labels, then the smallest and ``n_random`` random
subnets on the largest one's soft outputs (in-place distillation), accumulating gradients into
the shared weights before one optimizer step. :func:`run_training` is that loop for one worker;
:func:`nasprune.train.train_supernet` runs it in this process or, data-parallel, on Ray Train
workers (:mod:`nasprune.train_ray`), both of which import it from here. The state it writes after
every epoch (:func:`read_train_state`, :func:`resume_path`) lets a stopped run continue.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from nasprune.data import Dataset, random_shift
from nasprune.errors import CheckpointError, NasPruneError
from nasprune.evaluate import Evaluator
from nasprune.registry import create_supernet
from nasprune.space import SubnetConfig

TRAIN_STATE_FORMAT = "nasprune-train-state"
TRAIN_STATE_VERSION = 1


class TrainError(NasPruneError):
    """Training cannot run as asked (no such device, workers that disagree)."""


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
    importance: Literal["l1", "activation"] = Field(
        "l1",
        description="how channels are ranked before they are sorted: the L1 norm of the filters writing them, or "
        "their mean |activation| on the calibration split (benchmarks/importance.py compares the two)",
    )
    sampling: Literal["uniform", "sizes"] = Field(
        "uniform",
        description="how the n_random subnets are drawn: every choice uniformly (most subnets mid-sized), or "
        "around a uniformly drawn size level (GraphSpace.sample_at: small, mid and large subnets alike)",
    )
    seed: int = 0


def _kd_loss(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    return -(soft_targets * F.log_softmax(logits, 1)).sum(1).mean()


def _sgd(params, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return opt, sched


def _batches(ds: Dataset, cfg: TrainConfig, epoch: int):
    return ds.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)


# -- devices, the per-step randomness and the input pipeline ---------------------------------------


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when this machine has it) as a torch device."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(
                f"device '{name}': torch sees no CUDA device on this machine (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); use --torch-device cpu or --torch-device auto"
            )
        return torch.device(name)
    raise TrainError(f"device '{name}' is not one of cpu, cuda, cuda:N, auto")


def _seed_for(cfg: TrainConfig, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_subnets(space, cfg: TrainConfig, step: int) -> list[SubnetConfig]:
    """The random subnets of global step ``step``, a function of (seed, step) alone: every data-parallel
    worker trains the same architectures in a step, and a resumed run the same as an uninterrupted one."""
    rng = np.random.default_rng(_seed_for(cfg, step, 0))
    if cfg.sampling == "sizes":
        return [space.sample_at(rng, float(rng.uniform())) for _ in range(cfg.n_random)]
    return [space.sample(rng) for _ in range(cfg.n_random)]


def _step_generator(cfg: TrainConfig, step: int) -> torch.Generator:
    """The augmentation's random generator of global step ``step`` (same on every worker and after a resume)."""
    return torch.Generator().manual_seed(_seed_for(cfg, step, 1))


def epoch_order(ds: Dataset, cfg: TrainConfig, epoch: int) -> list[torch.Tensor]:
    """The training examples' indices, batch by batch, of ``epoch``: a permutation seeded by (seed, epoch)."""
    n = len(ds.tensors("train")[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    return list(perm.split(cfg.batch_size))


def _device_batches(ds: Dataset, cfg: TrainConfig, epoch: int, start: int, device: torch.device, shard=(0, 1)):
    """(step in epoch, x, y) from batch ``start`` of the epoch on, on ``device``.

    The order is :func:`epoch_order` (a resume at batch ``start`` continues the same order); a
    data-parallel worker ``shard = (rank, world)`` takes every world-th example of each batch. On
    CUDA each batch is copied from pinned memory without blocking, one batch ahead of the one being
    trained on."""
    x_all, y_all = ds.tensors("train")
    rank, world = shard
    order = epoch_order(ds, cfg, epoch)
    steps_per_epoch = len(order)
    cuda = device.type == "cuda"

    def prepare(i: int):
        idx = order[i]
        x = random_shift(x_all[idx], cfg.max_shift, _step_generator(cfg, epoch * steps_per_epoch + i))
        y = y_all[idx]
        if world > 1:
            x, y = x[rank::world], y[rank::world]
        if cuda:
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return i, x, y

    pending = prepare(start) if start < steps_per_epoch else None
    for i in range(start + 1, steps_per_epoch + 1):
        current, pending = pending, (prepare(i) if i < steps_per_epoch else None)
        yield current


# -- resumable training ----------------------------------------------------------------------------


def resume_path(checkpoint: str | Path) -> Path:
    """Where the training state of the run that writes ``checkpoint`` is kept until it finishes."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".resume")


def atomic_torch_save(obj, path: Path) -> Path:
    """Write ``obj`` so that ``path`` holds either the old or the new content, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_train_state(path: str | Path) -> dict | None:
    """The training state saved at ``path`` (see :func:`resume_path`), or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # a state file is written atomically; anything else is not ours
        raise CheckpointError(
            f"training state '{path}' is damaged ({type(e).__name__}); delete it to train from the start"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a nasprune training state; delete it to train from the start")
    return state


def check_state(state: dict, space, cfg: TrainConfig, path) -> None:
    if state.get("version") != TRAIN_STATE_VERSION:
        raise CheckpointError(
            f"training state '{path}' has version {state.get('version')}, expected {TRAIN_STATE_VERSION}; "
            "delete it (or pass --restart) to train from the start"
        )
    if state["space"] != space.name or state["space_digest"] != space.digest():
        raise CheckpointError(
            f"training state '{path}' belongs to space '{state['space']}' (digest {state['space_digest']}), not "
            f"'{space.name}' ({space.digest()}); delete it (or pass --restart) to train from the start"
        )
    saved = state["recipe"]
    diff = sorted(k for k, v in cfg.model_dump().items() if saved.get(k) != v)
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} then, {getattr(cfg, k)!r} now" for k in diff)
        raise CheckpointError(
            f"training state '{path}' was written with another recipe ({shown}); resume with the same "
            "settings, or pass --restart to train from the start"
        )


@dataclass(frozen=True)
class Resumed:
    """Where a training run picked up: the next epoch (0-based) and step within it, and the global step."""

    epoch: int
    step: int
    global_step: int

    def describe(self, epochs: int, steps_per_epoch: int) -> str:
        return (
            f"resuming from epoch {self.epoch + 1}/{epochs}, step {self.step}/{steps_per_epoch} "
            f"(global step {self.global_step}, {self.global_step} steps already done)"
        )


@dataclass
class Dist:
    """A data-parallel group: this worker's rank, the world size and how to average gradients."""

    rank: int = 0
    world: int = 1

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).clone()
            off += n

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, digest: int) -> bool:
        """Whether every worker passed the same ``digest`` (of the subnets it trained)."""
        if self.world == 1:
            return True
        import torch.distributed as dist

        t = torch.tensor([digest], dtype=torch.int64)
        lo, hi = t.clone(), t.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(lo.item() == hi.item())

    def broadcast_(self, net: torch.nn.Module) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in [*net.parameters(), *net.buffers()]:
                dist.broadcast(t.data, 0)


def run_training(
    space,
    cfg: TrainConfig,
    ds: Dataset,
    weights=None,
    device: torch.device = torch.device("cpu"),
    state: dict | None = None,
    state_file: Path | None = None,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    notify: Callable[[str], None] | None = None,
    dist: Dist | None = None,
    save_state: Callable[[dict, dict], None] | None = None,
) -> dict:
    """The training loop of one worker; returns the final training state (CPU tensors).

    Starts from ``state`` when given. After every epoch the state goes to ``save_state(state, rec)``
    (default: written atomically to ``state_file``). With ``dist`` (a data-parallel group), each
    worker trains its share of every batch on the same subnets and gradients are averaged before
    each optimizer step; rank 0 validates.
    """
    dist = dist or Dist()
    lead = dist.rank == 0
    torch.manual_seed(cfg.seed)
    teacher = None
    if weights is not None:
        teacher = create_supernet(space, weights).to(device).eval()  # the original model's function, frozen
        for p in teacher.parameters():
            p.requires_grad_(False)
    net = create_supernet(space, weights)

    def sort_channels() -> None:
        scores = None
        if cfg.importance == "activation":
            at = next(net.parameters()).device
            net.eval()  # BatchNorm running statistics, not the calibration batch's own
            scores = net.activation_importance([b.to(at) for b in ds.tensors("calib")[0].split(256)])
            net.train()  # both callers train next
        net.reorder_channels(scores)

    if weights is not None:
        sort_channels()
    net.to(device).train()
    params = list(net.parameters())
    steps_per_epoch = len(epoch_order(ds, cfg, 0))
    opt, sched = _sgd(params, cfg, cfg.epochs * steps_per_epoch)
    amp = device.type == "cuda"
    amp_dtype = torch.float16 if amp and not torch.cuda.is_bf16_supported() else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    largest, smallest = space.largest(), space.smallest()
    history: list[dict] = []
    resumes: list[dict] = []
    start_epoch = start_step = 0
    totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch, start_step = state["epoch"], state["step"]
        totals = dict(state["totals"])
        history = list(state["history"])
        at = Resumed(start_epoch, start_step, start_epoch * steps_per_epoch + start_step)
        resumes = [*state.get("resumes", []), {"epoch": at.epoch, "step": at.step, "global_step": at.global_step}]
        if notify and lead:
            notify(at.describe(cfg.epochs, steps_per_epoch))
    dist.broadcast_(net)

    def snapshot(epoch: int, step: int) -> dict:
        cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
        return {
            "format": TRAIN_STATE_FORMAT,
            "version": TRAIN_STATE_VERSION,
            "space": space.name,
            "space_digest": space.digest(),
            "recipe": cfg.model_dump(),
            "epoch": epoch,
            "step": step,
            "world": dist.world,
            "model": {k: cpu(v) for k, v in net.state_dict().items()},
            "optimizer": _to_cpu(opt.state_dict()),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            "totals": dict(totals),
            "history": list(history),
            "resumes": list(resumes),
        }

    def write_state(st: dict, _rec: dict) -> None:
        if state_file is not None and lead:
            atomic_torch_save(st, state_file)

    save_state = save_state or write_state
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=start_epoch * steps_per_epoch + start_step,
        desc=f"train {space.name}",
        disable=not (progress and lead),
        unit="step",
    )

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp)

    for epoch in range(start_epoch, cfg.epochs):
        first = start_step if epoch == start_epoch else 0
        if epoch == cfg.warmup_epochs and cfg.warmup_epochs > 0 and first == 0:
            sort_channels()
            opt.state.clear()  # momentum buffers belong to the old channel order
        sandwich = epoch >= cfg.warmup_epochs
        if first == 0:
            totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        digest = hashlib.sha256(str(epoch).encode())
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, x, y in _device_batches(ds, cfg, epoch, first, device, (dist.rank, dist.world)):
            g = epoch * steps_per_epoch + i
            opt.zero_grad(set_to_none=True)
            with autocast(), net.select(largest):
                out = net(x)
                loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            scaler.scale(loss).backward()
            if sandwich:
                with torch.no_grad(), autocast():
                    soft = F.softmax((teacher(x) if teacher is not None else out.detach()).float(), 1)
                subs = [smallest, *step_subnets(space, cfg, g)]
                for sub in subs:
                    with autocast(), net.select(sub):
                        kd = _kd_loss(net(x).float(), soft)
                    scaler.scale(kd).backward()
                digest.update("".join(s.key() for s in subs).encode())
            dist.average_gradients(params)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach().double() * len(y)
            correct_sum += (out.argmax(1) == y).sum()
            totals["seen"] += len(y)
            bar.update()
            if i % 10 == 0 or i == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", phase="sandwich" if sandwich else "warmup")
        totals["loss"] += loss_sum.item()
        seconds = time.perf_counter() - t_epoch
        totals["correct"] += correct_sum.item()
        loss_all, correct_all, seen_all = dist.sum([totals["loss"], totals["correct"], totals["seen"]])
        rec = {
            "epoch": epoch + 1,
            "epochs": cfg.epochs,
            "train_loss": loss_all / max(seen_all, 1),
            "train_acc_largest": correct_all / max(seen_all, 1),
            "lr": sched.get_last_lr()[0],
            "workers": dist.world,
            "train_seconds": seconds,  # this run's share of the epoch (all of it unless resumed mid-epoch)
        }
        if dist.world > 1:
            rec["subnets_agree"] = dist.agree(int(digest.hexdigest()[:15], 16))
            if not rec["subnets_agree"]:
                raise TrainError(f"epoch {epoch + 1}: the data-parallel workers trained different subnets")
        if lead:
            ev = Evaluator(net, ds)
            rec["val_acc_largest"] = ev.accuracy(largest, "val")
            rec["val_acc_smallest"] = ev.accuracy(smallest, "val")
        net.train()
        if resumes:
            rec["resumed_from_epoch"] = resumes[-1]["epoch"] + 1
        history.append(rec)
        st = snapshot(epoch + 1, 0)
        save_state(st, rec)
        if on_epoch and lead:
            on_epoch(rec)
    bar.close()
    return snapshot(cfg.epochs, 0)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
