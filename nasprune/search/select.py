"""Choosing among the front without choosing by noise.

The search scores each subnet on the validation split: a few hundred images (500 for mnist5k), so
accuracy moves in steps of 0.2 pt and its standard error is ~0.6 pt at 98%. Front candidates near
the budget differ by less than that, and "the most accurate" among them is largely a coin flip.

:func:`rank` orders the candidates so that the order only follows accuracy where accuracy can tell
them apart:

1. the reference is the most accurate candidate within the predicted budget;
2. every candidate is compared with it on the *same* images (paired: McNemar's exact test on the
   images one gets right and the other wrong); a candidate is *tied* with the reference unless it is
   worse with p < ``alpha``;
3. tied candidates within the predicted budget come first, in the order of ``rule``: by default
   (``largest-tied``) the slowest first, so a job uses its budget unless a smaller candidate is shown
   to be more accurate (a larger subnet also recovers more when it is fine-tuned); ``loss-tied``
   orders them by mean validation cross-entropy (the confidence on every image, not one bit per
   image); then the other candidates within budget, most accurate first; then those over the
   predicted budget, most accurate first.

Each candidate's accuracy carries its binomial standard error and a Wilson 95% interval, shown in
the API, the CLI and the plot. ``benchmarks/selection.py`` measures which rule picks the subnets
that score best on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from scipy.stats import binomtest

from nasprune.evaluate import PerExample

Rule = Literal["largest-tied", "accuracy", "loss", "loss-tied"]
RULES: tuple[Rule, ...] = ("largest-tied", "accuracy", "loss", "loss-tied")
DEFAULT_RULE: Rule = "largest-tied"


@dataclass(frozen=True)
class Selection:
    """How one candidate compares with the reference (the most accurate within the predicted budget)."""

    n: int  # validation examples
    accuracy: float
    se: float  # binomial standard error of the accuracy
    ci95: tuple[float, float]  # Wilson score interval
    loss: float  # mean cross-entropy on the validation split
    p_worse: float | None  # McNemar exact p that it is worse than the reference; None for the reference
    tied: bool  # not worse than the reference at level alpha
    rank: int  # 0 = considered first


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (stays inside [0, 1], sane at k = n)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_worse(cand: torch.Tensor, ref: torch.Tensor) -> float:
    """One-sided exact McNemar p-value that ``cand`` (bools per example) is less accurate than ``ref``."""
    b = int((ref & ~cand).sum())  # ref right, cand wrong
    c = int((cand & ~ref).sum())  # cand right, ref wrong
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="less").pvalue)


def rank(
    items: Sequence,
    examples: Callable[[object], PerExample],
    latency: Callable[[object], float],
    budget_ms: float,
    rule: Rule = DEFAULT_RULE,
    alpha: float = 0.05,
) -> list[tuple[object, Selection]]:
    """``items`` in the order to try them (see the module doc), each with its :class:`Selection`.

    ``examples(item)`` gives its per-example validation results; ``latency(item)`` its predicted
    latency. Ties on the rule's statistic go to the lower latency, then to the input order.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r} (choose from {', '.join(RULES)})")
    res = [examples(it) for it in items]
    lat = [latency(it) for it in items]
    within = [i for i in range(len(items)) if lat[i] <= budget_ms]
    pool = within or list(range(len(items)))
    ref = max(pool, key=lambda i: (res[i].accuracy, -lat[i], -i)) if pool else None
    stats = []
    for i, r in enumerate(res):
        n = len(r.correct)
        k = int(r.correct.sum())
        acc = k / n if n else 0.0
        p = None if i == ref else mcnemar_worse(r.correct, res[ref].correct)
        stats.append(
            dict(
                n=n,
                accuracy=acc,
                se=math.sqrt(acc * (1 - acc) / n) if n else 0.0,
                ci95=wilson(k, n),
                loss=float(r.loss.mean()) if n else math.inf,
                p_worse=p,
                tied=p is None or p >= alpha,
            )
        )

    def key(i: int):
        s = stats[i]
        over = lat[i] > budget_ms
        if rule == "accuracy":
            return (over, -s["accuracy"], lat[i], i)
        if rule == "loss":
            return (over, s["loss"], lat[i], i)
        if rule == "largest-tied":  # the tied group slowest first (use the budget), then the rest by accuracy
            return (over, not s["tied"], -lat[i] if s["tied"] else -s["accuracy"], lat[i], i)
        # loss-tied: the tied group by loss, then the rest by accuracy
        return (over, not s["tied"], s["loss"] if s["tied"] else -s["accuracy"], lat[i], i)

    order = sorted(range(len(items)), key=key)
    return [(items[i], Selection(**stats[i], rank=pos)) for pos, i in enumerate(order)]
