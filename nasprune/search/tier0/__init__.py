"""Tier 0: a pruned model under a latency budget in minutes, from trained weights and calibration data.

No training: (1) per channel and per skippable block, the loss increase of removing it, from the
user's weights and the calibration split (:mod:`.importance`); channels are sorted by it through the
supernet's own reordering, so that "the first ``w``" are the ``w`` most important; (2) widths and
depths chosen under the budget on the latency table (:mod:`.knapsack`); (3) the subnet extracted and
repaired: BatchNorm recalibrated, layers refitted by least squares to the original's outputs
(:mod:`.repair`). See docs/tier0.md.

    result = prune_to_budget(model_or_supernet, space, table, dataset, budget_ms=0.1)
    result.model        # a plain torch model, physically smaller
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from torch import nn

from nasprune.evaluate import recalibrate_bn
from nasprune.graph import GraphSupernet
from nasprune.graph.supernet import extract
from nasprune.search.tier0.importance import KINDS, Importance, estimate, measure_choices
from nasprune.search.tier0.knapsack import Choice, Knapsack, Values, uniform_under, values_of
from nasprune.search.tier0.repair import LayerFit, reconstruct

VALUES = ("measured", "estimate")
"""What the knapsack maximises: ``measured``, each choice's loss increase measured on the calibration split
(BatchNorm recalibrated); ``estimate``, the sum of the removed channels' (blocks') importance scores."""
REPAIRS = ("none", "bn", "ls")
"""``none``: the extracted subnet as it is; ``bn``: BatchNorm recalibrated; ``ls``: then least squares."""


@dataclass
class Tier0Result:
    """A tier-0 model: the plain torch model, its config, what the table predicts, what each step took."""

    model: nn.Module
    config: object
    predicted_ms: float
    budget_ms: float
    loss_estimate: float
    importance: str
    repair: str
    timings: dict[str, float]
    layers: list[LayerFit] = field(default_factory=list)
    choice: Choice | None = None


class Tier0:
    """The tier-0 pruner of one trained model, space, latency table and dataset.

    ``source`` is the trained model (a plain torch model of the space's architecture) or a
    :class:`~nasprune.graph.GraphSupernet` of the space; it is copied, never changed. :meth:`prepare`
    scores (and, with ``reorder``, sorts) the channels once; then :meth:`choose` and :meth:`build`
    answer any budget (a caller whose measured model misses the budget asks again for less). Keep
    ``reorder`` off for a *trained supernet*: its subnets were trained on the channels in its order,
    and sorting them anew loses that (on the test supernet, Fisher order kept less than its reverse).
    """

    def __init__(self, source: nn.Module, space, table, dataset, importance: str = "fisher",
                 values: str = "measured", reorder: bool = True, batch_size: int = 128):  # fmt: skip

        if importance not in KINDS:
            raise ValueError(f"importance '{importance}' is not one of {', '.join(KINDS)}")
        if values not in VALUES:
            raise ValueError(f"values '{values}' is not one of {', '.join(VALUES)}")
        if values == "estimate" and importance == "l1":
            raise ValueError("values 'estimate' need importance in loss units: 'fisher' or 'taylor', not 'l1'")
        self.space, self.table, self.dataset = space, table, dataset
        self.kind, self.value_kind, self.reorder, self.batch_size = importance, values, reorder, batch_size
        t0 = time.perf_counter()
        if isinstance(source, GraphSupernet):
            self.supernet = copy.deepcopy(source).eval()
        else:
            self.supernet = GraphSupernet(space, copy.deepcopy(source).eval())
        self.timings: dict[str, float] = {"convert_s": time.perf_counter() - t0}
        self.scores: Importance | None = None
        self.values: Values | None = None
        self._knapsack: Knapsack | None = None

    def _spend(self, step: str, seconds: float) -> None:
        """``timings`` add up over every call: what this pruner spent on each step."""
        self.timings[step] = self.timings.get(step, 0.0) + seconds

    def prepare(self) -> Tier0:
        """Score every channel and block on the calibration split, sort the channels by their scores
        (the network's function is unchanged) and build the knapsack over the table."""
        if self.scores is not None:
            return self
        x, y = self.dataset.tensors("calib")
        t0 = time.perf_counter()
        scores = estimate(self.supernet, x, y, self.kind, self.batch_size)
        if self.reorder:
            scores = scores.permuted(self.supernet.reorder_channels(scores.channels))
        self.scores = scores
        self.timings["importance_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.value_kind == "measured":
            self.values = measure_choices(self.supernet, x, y)
        else:
            self.values = values_of(self.space, self.scores)
        self.timings["values_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._knapsack = Knapsack(self.space, self.table, self.values)
        self.timings["knapsack_setup_s"] = time.perf_counter() - t0
        return self

    def choose(self, budget_ms: float) -> Choice:
        """The widths and depths with the least estimated loss predicted within ``budget_ms``."""
        self.prepare()
        choice = self._knapsack.solve(budget_ms)
        self._spend("knapsack_s", choice.seconds)
        return choice

    def build(self, cfg, repair: str = "ls", **repair_options) -> tuple[nn.Module, list[LayerFit]]:
        """The subnet ``cfg`` extracted (a plain model) and repaired: ``none``, ``bn`` or ``ls`` (:data:`REPAIRS`)."""
        if repair not in REPAIRS:
            raise ValueError(f"repair '{repair}' is not one of {', '.join(REPAIRS)}")
        self.prepare()
        x, _ = self.dataset.tensors("calib")
        t0 = time.perf_counter()
        model = extract(self.supernet, cfg).eval()
        self._spend("extract_s", time.perf_counter() - t0)
        layers: list[LayerFit] = []
        if self.space.parse_config(cfg) == self.space.largest():
            repair = "none"  # nothing was removed: the original, as trained
        t0 = time.perf_counter()
        if repair != "none":
            recalibrate_bn(model, (x[i : i + 250] for i in range(0, len(x), 250)))
        self._spend("bn_s", time.perf_counter() - t0)
        t0 = time.perf_counter()
        if repair == "ls":
            layers = reconstruct(model, self.supernet, cfg, x, **repair_options)
        self._spend("ls_s", time.perf_counter() - t0)
        return model.eval(), layers

    def prune(self, budget_ms: float, repair: str = "ls", **repair_options) -> Tier0Result:
        choice = self.choose(budget_ms)
        model, layers = self.build(choice.config, repair, **repair_options)
        return Tier0Result(model, choice.config, choice.predicted_ms, budget_ms, choice.loss, self.kind, repair,
                           dict(self.timings), layers, choice)  # fmt: skip


def prune_to_budget(
    source: nn.Module,
    space,
    table,
    dataset,
    budget_ms: float,
    importance: str = "fisher",
    repair: str = "ls",
    values: str = "measured",
    reorder: bool = True,
    **repair_options,
) -> Tier0Result:
    """Prune a trained model (or a supernet of ``space``) to ``budget_ms`` predicted by ``table``, from
    ``dataset``'s calibration split alone: importance, knapsack, extraction, repair (see the module doc)."""
    t0 = time.perf_counter()
    pruner = Tier0(source, space, table, dataset, importance, values, reorder)
    result = pruner.prune(budget_ms, repair, **repair_options)
    result.timings["total_s"] = time.perf_counter() - t0
    return result


__all__ = [
    "KINDS",
    "REPAIRS",
    "Choice",
    "Importance",
    "Knapsack",
    "LayerFit",
    "Tier0",
    "Tier0Result",
    "Values",
    "estimate",
    "prune_to_budget",
    "reconstruct",
    "uniform_under",
    "values_of",
]
