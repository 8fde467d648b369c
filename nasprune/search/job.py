"""What a search job asks for (``SearchJob``) and what it returns (``Candidate``, ``SearchResult``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

Sampler = Literal["nsga2", "tpe", "random"]
Backend = Literal["optuna", "ray"]


class Constraints(BaseModel):
    """Optional limits on top of the latency budget."""

    model_config = ConfigDict(extra="forbid")

    max_params: Annotated[int, Field(gt=0)] | None = None
    max_macs: Annotated[int, Field(gt=0)] | None = None


class SearchJob(BaseModel):
    """A search for the most accurate subnets of ``space`` within ``latency_budget_ms`` on ``device``."""

    model_config = ConfigDict(extra="forbid")

    space: str = Field(description="registered search space name, e.g. resnet_mnist (or the model id of 'model')")
    model: Annotated[str, Field(pattern=r"^m_[0-9a-f]{16}$")] | None = Field(
        None, description="an uploaded model's id (POST /v1/models): search its derived space from its weights"
    )
    dataset: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = Field(
        None, description="a dataset to train and score on instead of the space's own (it must fit the model)"
    )
    device: str = Field("local-cpu", description="device whose latency table predicts latency")
    latency_budget_ms: float = Field(gt=0, le=60_000, description="latency budget in milliseconds (batch 1)")
    n_trials: Annotated[int, Field(ge=1, le=100_000)] = 100
    sampler: Sampler = "nsga2"
    backend: Backend = "optuna"
    seed: int = 0
    constraints: Constraints = Field(default_factory=Constraints)
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    verify_top_k: Annotated[int, Field(ge=1, le=20)] = 3
    refine_trials: Annotated[int, Field(ge=0, le=100_000)] | None = Field(
        None,
        description="of n_trials, how many are spent near the budget after sampling: each takes one of the best "
        "candidates within the budget, shrinks it a little at random, then grows its widths and depths one step at "
        "a time while the latency table says it fits (nasprune.search.refine); default a quarter of n_trials "
        "(none below 8 trials); 0 turns it off",
    )
    train_epochs: Annotated[int, Field(ge=1, le=1_000)] | None = Field(
        None,
        description="epochs of the supernet's training when this job trains it (default: the recipe for the "
        "input's kind, nasprune.train.default_recipe: 30 for images and sequences, 40 for flat features); a "
        "supernet trained for other epochs is cached apart, so a short trial run never stands in for a full one",
    )
    finetune_steps: Annotated[int, Field(ge=0, le=1_000_000)] | None = Field(
        None,
        description="recovery budget: fine-tune the best verified candidates alone for this many steps (distilled "
        "from the original model or the largest subnet) and deliver the best of them when it scores better; "
        "default (null) sized to the dataset (4 epochs, at least 500 and at most 3,000 steps: "
        "nasprune.finetune.default_steps); 0 turns fine-tuning off",
    )
    finetune_epochs: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="the recovery budget in passes over the train split instead of finetune_steps; 0: off"
    )
    finetune_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = Field(
        None, description="stop fine-tuning each candidate after this many seconds, whatever the steps"
    )
    finetune_top_k: Annotated[int, Field(ge=1, le=10)] = Field(
        2,
        description="fine-tune this many of the verified candidates (in selection order) and deliver the one that "
        "scores best on the validation split after fine-tuning",
    )
    qat_min_drop: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="an int8 recommendation is fine-tuned (finetune_steps) and quantized again; when quantizing "
        "cost it more than this much validation accuracy (0.005 = 0.5 pt) the fine-tuning is quantization-aware "
        "(int8 simulated in training). Off (null) by default: on resnet_mnist and cnn1d_mnist1d no candidate lost "
        "0.5 pt and quantization-aware fine-tuning scored the same as float fine-tuning (docs/int8.md)",
    )
    selection: Literal["largest-tied", "accuracy", "loss-tied", "loss"] = Field(
        "largest-tied",
        description="how the candidates within budget are ordered for verification and fine-tuning: 'largest-tied' "
        "(default) takes the candidates not significantly less accurate than the most accurate one (McNemar, "
        "p >= 0.05, same validation images) slowest first, so the budget is used unless a smaller candidate is "
        "shown to be better; 'accuracy' the highest validation accuracy; 'loss-tied' the tied ones by lowest "
        "validation loss; 'loss' the lowest validation loss (docs/search.md)",
    )

    tier0: Literal["auto", "only", "off"] = Field(
        "auto",
        description="tier 0, a model pruned to the budget without training (nasprune.search.tier0: importance on the "
        "calibration split, a knapsack on the latency table, least-squares repair; minutes, not hours): 'auto' "
        "(default) delivers it first, before the supernet trains, when the space names trained weights (an uploaded "
        "or derived model), and the job delivers whichever verified model of the two tiers scores best on "
        "validation; 'only' delivers tier 0 alone (no supernet, no search; from the space's weights, else from its "
        "trained supernet); 'off' never runs it",
    )
    precisions: list[Literal["fp32", "int8"]] = Field(
        default_factory=lambda: ["fp32"],
        description="precisions of the candidates: ['fp32', 'int8'] adds onnxruntime static int8 (QDQ) candidates "
        "to the front where they pay (docs/int8.md); fp32 is always searched",
    )

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, v: list[str]) -> list[str]:
        if "fp32" not in v:
            raise ValueError("must include 'fp32' (the search scores architectures at fp32; allowed: fp32, int8)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _one_recovery_unit(self) -> SearchJob:
        if self.finetune_steps is not None and self.finetune_epochs is not None:
            raise ValueError("give the fine-tuning budget as finetune_steps or finetune_epochs, not both")
        return self

    def n_refine(self) -> int:
        """How many of ``n_trials`` are spent growing the best candidates towards the budget."""
        if self.refine_trials is not None:
            return min(self.refine_trials, self.n_trials)
        return self.n_trials // 4 if self.n_trials >= 8 else 0

    def finetune_plan(self, n_train: int, batch_size: int) -> int:
        """Fine-tuning steps per candidate for a train split of ``n_train`` samples (0: no fine-tuning)."""
        from nasprune.finetune import default_steps

        if self.finetune_steps is not None:
            return self.finetune_steps
        if self.finetune_epochs is not None:
            return round(self.finetune_epochs * math.ceil(n_train / batch_size))
        return default_steps(n_train, batch_size)

    @field_validator("latency_budget_ms")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number of milliseconds")
        return v


class Candidate(BaseModel):
    """One Pareto-optimal subnet (or the job's tier-0 model: ``tier`` 0)."""

    candidate_id: str = Field(description="the subnet key (16 hex digits; for int8 and tier 0 derived from it)")
    trial_number: int = Field(description="the search trial that scored it (-1 for tier 0: no trial)")
    tier: Literal[0, 1] = Field(
        1,
        description="1: a subnet the search scored on the trained supernet (then fine-tuned); 0: pruned from the "
        "trained weights without training (importance, knapsack on the latency table, least-squares repair)",
    )
    precision: Literal["fp32", "int8"] = Field("fp32", description="what model.onnx runs: float or int8 QDQ")
    calibration: str | None = Field(None, description="int8: the calibration method of its activation ranges")
    fp32_accuracy: float | None = Field(
        None, description="int8: the validation accuracy of the same architecture at fp32 (the drop is this - accuracy)"
    )
    config: dict
    accuracy: float
    latency_ms: float = Field(description="predicted by the device's latency table")
    params: int
    macs: int
    feasible: bool
    verified: bool = False
    measured_latency_ms: float | None = Field(
        None, description="measured now, at the speed of the latency table's machine (see machine_speed)"
    )
    machine_speed: float | None = Field(
        None,
        description="how much slower (>1) or faster (<1) this machine ran reference subnets during the "
        "verification than when the latency table measured them; the raw median is measured_latency_ms x this",
    )
    test_accuracy: float | None = Field(
        None, description="accuracy on the held-out test split, for exported candidates (selection used val)"
    )
    unverified_reason: str | None = Field(
        None,
        description="why this candidate's latency is not verified although it was exported (the timing could not "
        "be trusted on a busy machine, or the device is not this machine); its predicted latency is what holds",
    )
    latency_spread: float | None = Field(
        None, description="median of the per-round medians over their minimum, minus 1 (0.05 = rounds within ~5%)"
    )
    load_avg: list[float] | None = Field(
        None, description="the machine's 1-, 5- and 15-minute load average when the candidate was timed"
    )
    inherited_accuracy: float | None = Field(
        None, description="validation accuracy on the supernet's shared weights (set when the candidate was fine-tuned)"
    )
    inherited_test_accuracy: float | None = Field(None, description="test accuracy on the shared weights")
    finetuned_accuracy: float | None = Field(None, description="validation accuracy after fine-tuning alone")
    finetuned_test_accuracy: float | None = Field(None, description="test accuracy after fine-tuning alone")
    accuracy_se: float | None = Field(
        None, description="binomial standard error of 'accuracy' (the validation accuracy the search saw)"
    )
    accuracy_ci95: tuple[float, float] | None = Field(
        None, description="Wilson 95% interval of the validation accuracy the search saw"
    )
    val_loss: float | None = Field(None, description="mean cross-entropy on the validation split (shared weights)")
    p_worse_than_best: float | None = Field(
        None,
        description="McNemar exact p-value (one-sided, same validation images) that this candidate is less accurate "
        "than the most accurate one within the predicted budget; null for that one",
    )
    tied_with_best: bool | None = Field(
        None, description="not significantly less accurate than the most accurate candidate (p >= 0.05)"
    )
    selection_rank: int | None = Field(
        None, description="the order in which candidates were considered for recommendation (0 = first)"
    )
    finetune_steps: int | None = Field(None, description="optimiser steps this candidate was fine-tuned for")
    delivered: Literal["inherited", "fine-tuned"] | None = Field(
        None,
        description="which weights model.onnx holds: the supernet's (inherited) or fine-tuned ones; 'accuracy' and "
        "'test_accuracy' are those of the delivered weights",
    )


DRIFT_APE = 10.0
"""A table whose predictions miss a job's measured models by more than this (median APE, %) is reported as
drifted, with the command that rebuilds it (:attr:`SearchResult.table_drift`)."""


class SearchResult(BaseModel):
    job: SearchJob
    n_trials: int
    pareto: list[Candidate]
    recommended: Candidate | None = Field(
        description="the delivered model: the most accurate verified one of both tiers (model.onnx)"
    )
    tier0: Candidate | None = Field(None, description="the tier-0 model, when the job made one")
    table_error: dict | None = None
    tracking_error: str | None = None

    @computed_field
    @property
    def table_error_in_use(self) -> dict | None:
        """The latency table checked by this job's own measurements: the absolute percentage error of its
        predictions on the candidates measured here (at the table's machine speed); None when none was."""
        ape = [abs(c.latency_ms - c.measured_latency_ms) / c.measured_latency_ms * 100 for c in self.pareto
               if c.measured_latency_ms and c.precision == "fp32"]  # fmt: skip
        if not ape:
            return None
        return {"n": len(ape), "median_ape": round(statistics.median(ape), 3), "max_ape": round(max(ape), 3)}

    @computed_field
    @property
    def table_drift(self) -> str | None:
        """What to do when the table predicted this job's measured models more than :data:`DRIFT_APE` % off
        (median): it no longer describes this machine (rebuilt while it was busy, or the machine changed)."""
        err = self.table_error_in_use
        if err is None or err["median_ape"] <= DRIFT_APE:
            return None
        return (
            f"the latency table predicted this job's {err['n']} measured model(s) {err['median_ape']:.1f}% off "
            f"(median; more than {DRIFT_APE:g}%): it no longer describes this machine; rebuild it while the machine "
            f"is quiet with 'nasprune lut build --space {self.job.space} --device {self.job.device}' and search again"
        )

    @computed_field
    @property
    def budget_use(self) -> float | None:
        """The delivered model's latency over the budget: measured where it was verified, else predicted."""
        rec = self.recommended
        if rec is None:
            return None
        ms = rec.measured_latency_ms if rec.measured_latency_ms is not None else rec.latency_ms
        return ms / self.job.latency_budget_ms


class Progress(BaseModel):
    """What a running job reports: the stage it is in and, while searching, trials done and best so far."""

    stage: Literal[
        "queued",
        "building latency table",
        "tier 0",
        "preparing supernet",
        "training supernet",
        "searching",
        "verifying",
        "done",
    ]
    n_done: int = 0
    n_total: int = 0
    best_accuracy: float | None = None
    best_latency_ms: float | None = None
    message: str = ""
    training: TrainingProgress | None = Field(None, description="while the supernet trains: its last epoch")
    tier0: Candidate | None = Field(
        None, description="the tier-0 model once made: the job's first result, downloadable while the search runs"
    )


class TrainingProgress(BaseModel):
    """The supernet training's last finished epoch, and where it resumed if it was interrupted."""

    epoch: int
    n_epochs: int
    train_loss: float
    val_acc_largest: float | None = None
    val_acc_smallest: float | None = None
    workers: int = 1
    resumed_from_epoch: int | None = Field(None, description="the 1-based epoch a killed training resumed at")

    @classmethod
    def of(cls, rec: dict) -> TrainingProgress:
        """From an epoch record of :func:`nasprune.train.train_supernet`."""
        return cls(
            epoch=rec["epoch"],
            n_epochs=rec["epochs"],
            train_loss=rec["train_loss"],
            val_acc_largest=rec.get("val_acc_largest"),
            val_acc_smallest=rec.get("val_acc_smallest"),
            workers=rec.get("workers", 1),
            resumed_from_epoch=rec.get("resumed_from_epoch"),
        )

    def describe(self) -> str:
        accs = ""
        if self.val_acc_largest is not None and self.val_acc_smallest is not None:
            accs = f", val acc largest {self.val_acc_largest:.1%} smallest {self.val_acc_smallest:.1%}"
        resumed = f" (resumed at epoch {self.resumed_from_epoch})" if self.resumed_from_epoch else ""
        return f"training supernet: epoch {self.epoch}/{self.n_epochs}, loss {self.train_loss:.3f}{accs}{resumed}"


@dataclass
class JobContext:
    """Where a job keeps its state, and how it talks back to whoever runs it.

    ``storage_url`` is the Optuna RDB storage (SQLite file or PostgreSQL URL) holding the trials:
    running the same job id again resumes it without losing or repeating finished trials.
    """

    job_id: str
    storage_url: str
    output_dir: Path
    data_dir: Path | None = None
    tracking_uri: str | None = None
    ray_address: str | None = None
    tracking_drain_s: float = 60.0  # how long a finished job waits for MLflow to take what is still queued
    on_progress: Callable[[Progress], None] = field(default=lambda _p: None)
    should_stop: Callable[[], bool] = field(default=lambda: False)
