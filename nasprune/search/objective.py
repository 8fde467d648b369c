"""From a trial to a subnet and its metrics: accuracy (BN-recalibrated) and table latency.

Every backend samples the same fixed-dimension parameters (``depth.<stage>``, ``width.<layer>``,
inactive widths included, so NSGA-II crossover stays well defined) and sets the same constraints
on the trial before evaluation: ``latency_ms`` (predicted - budget) and, when asked, ``params``
and ``macs``. A value <= 0 is feasible. Infeasible trials are still evaluated and kept.
"""

from __future__ import annotations

from pydantic import BaseModel

from nasprune.evaluate import Evaluator
from nasprune.graph.supernet import GraphSupernet
from nasprune.search.job import SearchJob
from nasprune.space import SubnetConfig


class Metrics(BaseModel):
    accuracy: float
    latency_ms: float
    params: int
    macs: int
    feasible: bool


class Objective:
    """Scores configs for one job: ``suggest(trial) -> cfg``, ``evaluate(cfg) -> Metrics``."""

    def __init__(self, supernet: GraphSupernet, evaluator: Evaluator, table, job: SearchJob):
        self.supernet, self.evaluator, self.table, self.job = supernet, evaluator, table, job
        self.space = supernet.space
        self._static_cache: dict[str, tuple[float, int, int]] = {}

    # -- parameters ------------------------------------------------------------------------------
    def suggest(self, trial) -> SubnetConfig:
        """Draw a config from an Optuna trial (or anything with ``suggest_categorical``) and constrain it."""
        depths = {s: trial.suggest_categorical(f"depth.{s}", list(c)) for s, c in self.space.depth_choices().items()}
        widths = {w: trial.suggest_categorical(f"width.{w}", list(c)) for w, c in self.space.width_layers().items()}
        cfg = self.space.config(depths, widths)
        for name, value in self.constraints(cfg).items():
            trial.set_constraint(name, value)
        trial.set_user_attr("subnet_key", cfg.key())
        trial.set_user_attr("config", cfg.model_dump())
        return cfg

    def params_of(self, cfg: SubnetConfig) -> dict[str, int]:
        """Trial parameters for ``cfg`` (for enqueueing); widths of inactive layers take their largest value."""
        p = {f"depth.{s}": d for s, d in cfg.depths.items()}
        for layer, choices in self.space.width_layers().items():
            p[f"width.{layer}"] = cfg.widths.get(layer, max(choices))
        return p

    def config_of(self, params: dict) -> SubnetConfig:
        depths = {k.removeprefix("depth."): v for k, v in params.items() if k.startswith("depth.")}
        widths = {k.removeprefix("width."): v for k, v in params.items() if k.startswith("width.")}
        return self.space.config(depths, widths)

    # -- scores ----------------------------------------------------------------------------------
    def constraints(self, cfg: SubnetConfig) -> dict[str, float]:
        latency, params, macs = self._static(cfg)
        c = {"latency_ms": latency - self.job.latency_budget_ms}
        if self.job.constraints.max_params is not None:
            c["params"] = float(params - self.job.constraints.max_params)
        if self.job.constraints.max_macs is not None:
            c["macs"] = float(macs - self.job.constraints.max_macs)
        return c

    def _static(self, cfg: SubnetConfig) -> tuple[float, int, int]:
        """Predicted latency, params and MACs: from the config alone, so computed once per architecture."""
        key = cfg.key()
        if key not in self._static_cache:
            self._static_cache[key] = (self.table.predict(cfg), self.supernet.num_params(cfg), self.supernet.macs(cfg))
        return self._static_cache[key]

    def feasible(self, cfg: SubnetConfig) -> bool:
        return all(v <= 0 for v in self.constraints(cfg).values())

    def evaluate(self, cfg: SubnetConfig) -> Metrics:
        return self.metrics(cfg, self.evaluator.accuracy(cfg, "val"))

    def metrics(self, cfg: SubnetConfig, accuracy: float) -> Metrics:
        """Everything but accuracy comes from the config alone (table, trace)."""
        latency, params, macs = self._static(cfg)
        return Metrics(accuracy=accuracy, latency_ms=latency, params=params, macs=macs, feasible=self.feasible(cfg))

    def seeds(self) -> list[SubnetConfig]:
        """Every uniform-width config ("width multiplier" baseline, at full and at minimum depth) that
        fits the budget, largest first, capped at a fifth of the trials: the front then starts at least
        as good as uniform scaling."""
        fractions = sorted({w / max(c) for c in self.space.width_layers().values() for w in c}, reverse=True)
        min_depths = {s: min(c) for s, c in self.space.depth_choices().items()}
        out: list[SubnetConfig] = []
        for f in fractions:
            full = self.space.uniform(f)
            for cfg in (full, self.space.config(min_depths, full.widths)):
                if self.feasible(cfg) and cfg not in out:
                    out.append(cfg)
        return out[: max(2, self.job.n_trials // 5)]  # at most a fifth of the trials
