"""Fine-tune a delivered subnet: extracted from the supernet, trained on its own with distillation.

A subnet scored during the search runs on weights it *shares* with every other subnet (inherited
weights, BatchNorm recalibrated). Once the search has chosen one, it can be trained alone for a
short budget, with the supernet's largest subnet (or the user's original model, when the space
starts from trained weights) as the teacher: cross-entropy on the labels plus the KL divergence to
the teacher's softened outputs. Tools a user would compare against (Torch-Pruning, ModelOpt) always
fine-tune after pruning; without it the comparison is unfair to nasprune's own subnets.

An int8 recommendation is fine-tuned *quantization-aware* (``fake_quant=True``): the training
forward pass simulates the int8 model onnxruntime will run (:class:`Int8Simulation`), so the float
weights learn to tolerate the rounding the static quantization then applies to them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from nasprune.data import Dataset, random_shift
from nasprune.evaluate import Evaluator, recalibrate_bn
from nasprune.graph.supernet import GraphSupernet, extract
from nasprune.registry import create_supernet
from nasprune.space import SubnetConfig


@dataclass
class FineTuneResult:
    model: nn.Module
    epochs_done: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    recipe: str = ""


MIN_STEPS, MAX_STEPS, EPOCHS = 500, 3000, 4


def default_steps(n_train: int, batch_size: int) -> int:
    """The default recovery budget: ``EPOCHS`` passes over the train split, at least ``MIN_STEPS`` and at
    most ``MAX_STEPS`` optimiser steps. A small dataset gets many passes (mnist5k: 500 steps, 18 epochs),
    a large one a few (Fashion-MNIST's 54,000 images: 1,688 steps); Torch-Pruning's figures in
    docs/results.md were fine-tuned for 1,500-4,700 steps."""
    per_epoch = math.ceil(n_train / batch_size)
    return int(min(MAX_STEPS, max(MIN_STEPS, EPOCHS * per_epoch)))


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.05):
    """A short run's schedule: linear warm-up over ``warmup`` of the steps (the first updates from
    inherited weights are the least reliable: BatchNorm statistics and momentum both start cold), then
    cosine decay to zero."""
    n_warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - n_warm) / max(1, steps - n_warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _WeightInt8(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight, as onnxruntime quantizes
    weights (QInt8 per channel, symmetric: scale = max|w| / 127, zero point 0, values in [-127, 127], as
    read back from its quantized models); gradients pass straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (amax / 127).float()
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _InputUint8:
    """Per-tensor asymmetric uint8 fake quantization of a layer's input, its range (always including 0,
    as onnxruntime's MinMax calibration does) an exponential moving average of the batches' min/max."""

    def __init__(self, momentum: float = 0.1):
        self.momentum, self.lo, self.hi = momentum, None, None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if module.training:
            lo, hi = min(float(x.detach().min()), 0.0), max(float(x.detach().max()), 0.0)
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.momentum * (lo - self.lo)
                self.hi += self.momentum * (hi - self.hi)
        if self.lo is None or self.hi - self.lo < 1e-8:
            return None
        scale = (self.hi - self.lo) / 255.0
        zero = int(min(255, max(0, round(-self.lo / scale))))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


class Int8Simulation:
    """Simulate onnxruntime's static U8S8 quantization (``nasprune.quantize``) in a float model while it
    trains: every Conv/Linear weight is fake-quantized per output channel to int8 and every Conv/Linear
    input per tensor to uint8 (straight-through gradients). :meth:`remove` takes the simulation out and
    leaves the trained float weights, which onnxruntime then quantizes as usual. Per-channel weight
    quantization commutes with folding BatchNorm into the conv (a per-channel scale), so simulating it
    before the fold is exact; activation ranges are approximated (the calibration sets the real ones)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
        self.hooks = []
        for m in self.layers:
            parametrize.register_parametrization(m, "weight", _WeightInt8())
            self.hooks.append(m.register_forward_pre_hook(_InputUint8()))

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for m in self.layers:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        self.hooks, self.layers = [], []


def teacher_of(supernet: GraphSupernet, dataset: Dataset | None = None) -> nn.Module:
    """The distillation teacher: the user's original model when the space starts from trained weights
    (its function, rebuilt from the space's weights, with its own BatchNorm statistics), otherwise the
    supernet's largest subnet with its BatchNorm statistics recomputed on ``dataset``'s calibration
    split, as the search's evaluator does. The shared statistics fit no single subnet: a 3-epoch
    resnet_mnist supernet's largest subnet scored 18% on validation with them, and distilling from it
    wrecked fine-tuning (90% -> 47%)."""
    space = supernet.space
    if getattr(space, "weights", None):
        original = create_supernet(space)
        return extract(original, space.largest()).eval()
    if dataset is None:
        return extract(supernet, space.largest()).eval()

    return Evaluator(supernet, dataset).subnet(space.largest())  # recalibrated as the search scores it


def finetune_subnet(
    supernet: GraphSupernet,
    cfg: SubnetConfig,
    dataset: Dataset,
    epochs: float = 3,
    seconds: float | None = None,
    steps: int | None = None,
    teacher: nn.Module | None = None,
    lr: float = 0.01,
    batch_size: int = 128,
    max_shift: int = 0,
    temperature: float = 2.0,
    seed: int = 0,
    fake_quant: bool = False,
) -> FineTuneResult:
    """Train the subnet ``cfg`` alone, starting from its inherited weights.

    Stops after ``steps`` optimiser steps (or, without them, ``epochs`` passes over the train split) or
    ``seconds`` of wall clock, whichever comes first (the learning rate warms up over the first 5% of
    the planned steps, then follows a cosine to zero: :func:`warmup_cosine`; with ``seconds`` the plan
    is set from the first steps' speed). Loss: cross-entropy + ``temperature**2`` x KL to the teacher's
    softened outputs. BatchNorm statistics are then recomputed on the calibration split, as for the
    inherited subnet, so both are scored the same way. The supernet is not changed.
    ``fake_quant`` trains under :class:`Int8Simulation` (quantization-aware fine-tuning); the model
    returned is float, to be quantized by :func:`nasprune.quantize.quantize_model`.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = extract(supernet, cfg).train()
    teacher = teacher if teacher is not None else teacher_of(supernet, dataset)
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    per_epoch = len(dataset.loader("train", batch_size, shuffle=True, seed=seed))
    planned = max(1, steps if steps is not None else round(epochs * per_epoch))
    sim = Int8Simulation(model) if fake_quant else None
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    sched = warmup_cosine(opt, planned)
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
                sched = warmup_cosine(opt, planned)
                sched.last_epoch = done - 1
                sched.step()
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
    if sim is not None:
        sim.remove()
    xc, _ = dataset.tensors("calib")
    recalibrate_bn(model, [xc])
    recipe = (f"SGD (nesterov, lr {lr:g}, 5% warm-up, cosine), batch {batch_size}, cross-entropy + "
              f"KL to the teacher at T={temperature:g}")
    return FineTuneResult(model.eval(), done / per_epoch, time.perf_counter() - t0, history, done, recipe)
