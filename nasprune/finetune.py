"""Fine-tune a delivered subnet: extracted from the supernet, trained on its own with distillation.

A subnet scored during the search runs on weights it *shares* with every other subnet (inherited
weights, BatchNorm recalibrated). Once the search has chosen one, it can be trained alone for a
short budget, with the supernet's largest subnet (or the user's original model, when the space
starts from trained weights) as the teacher: cross-entropy on the labels plus the KL divergence to
the teacher's softened outputs. Tools a user would compare against (Torch-Pruning, ModelOpt) always
fine-tune after pruning; without it the comparison is unfair to nasprune's own subnets.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.data import Dataset, random_shift
from nasprune.elastic.supernet import Supernet, extract
from nasprune.evaluate import recalibrate_bn
from nasprune.space import SubnetConfig


@dataclass
class FineTuneResult:
    model: nn.Module
    epochs_done: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def teacher_of(supernet: Supernet) -> nn.Module:
    """The distillation teacher: the user's original model when the space starts from trained weights
    (its function, rebuilt from the space's weights), otherwise the supernet's largest subnet."""
    space = supernet.space
    if getattr(space, "weights", None):
        from nasprune.registry import create_supernet

        original = create_supernet(space)
        return extract(original, space.largest()).eval()
    return extract(supernet, space.largest()).eval()


def finetune_subnet(
    supernet: Supernet,
    cfg: SubnetConfig,
    dataset: Dataset,
    epochs: float = 3,
    seconds: float | None = None,
    teacher: nn.Module | None = None,
    lr: float = 0.01,
    batch_size: int = 128,
    max_shift: int = 0,
    temperature: float = 2.0,
    seed: int = 0,
) -> FineTuneResult:
    """Train the subnet ``cfg`` alone, starting from its inherited weights.

    Stops after ``epochs`` passes over the train split or ``seconds`` of wall clock, whichever comes
    first (the learning rate follows a cosine over the planned steps; with ``seconds`` the plan is set
    from the first steps' speed). Loss: cross-entropy + ``temperature**2`` x KL to the teacher's
    softened outputs. BatchNorm statistics are then recomputed on the calibration split, as for the
    inherited subnet, so both are scored the same way. The supernet is not changed.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = extract(supernet, cfg).train()
    teacher = teacher if teacher is not None else teacher_of(supernet)
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    per_epoch = len(dataset.loader("train", batch_size, shuffle=True, seed=seed))
    planned = max(1, round(epochs * per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=planned)
    t0 = time.perf_counter()
    done, epoch, history = 0, 0, []
    while done < planned:
        totals = {"loss": 0.0, "n": 0}
        for x, y in dataset.loader("train", batch_size, shuffle=True, seed=seed * 1000 + epoch):
            if done >= planned:
                break
            if seconds is not None and done == 5:  # re-plan the schedule from the measured step rate
                rate = done / max(time.perf_counter() - t0, 1e-9)
                planned = max(done + 1, min(planned, int(rate * seconds)))
                sched.T_max = planned
            x = random_shift(x, max_shift, gen)
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, 1)
            out = model(x)
            kd = F.kl_div(F.log_softmax(out / temperature, 1), soft, reduction="batchmean") * temperature**2
            loss = F.cross_entropy(out, y) + kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            done += 1
            totals["loss"] += loss.item() * len(y)
            totals["n"] += len(y)
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                planned = done
        history.append({"epoch": epoch, "loss": totals["loss"] / max(totals["n"], 1)})
        epoch += 1
    xc, _ = dataset.tensors("calib")
    recalibrate_bn(model, [xc])
    return FineTuneResult(model.eval(), done / per_epoch, time.perf_counter() - t0, history)

