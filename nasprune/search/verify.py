"""Verification by measurement: exported candidates timed in interleaved rounds, and when to trust it.

:func:`time_rounds` times exported models against each other in rounds of random order;
:func:`distrust` says why a batch of timings (or one candidate's) cannot be trusted, with reference
subnets of the latency table timed alongside (:func:`machine_speed`). The search's verification
(:mod:`nasprune.search.runner`) and tier 0's delivery (:mod:`nasprune.search.tier0.deliver`) use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasprune.latency.load import load_avg
from nasprune.latency.profile import export_all
from nasprune.latency.timing import feed_for, interleave_calls, make_session

__all__ = [
    "RoundTiming",
    "VerifySettings",
    "distrust",
    "load_avg",
    "machine_speed",
    "reference_subnets",
    "time_rounds",
    "too_few_rounds",
]


def machine_speed(now_ms: list[float], then_ms: list[float]) -> float:
    """The median ratio of reference subnets' times now to their times in the table (1.0 without any)."""
    import statistics

    ratios = [a / b for a, b in zip(now_ms, then_ms, strict=True) if a > 0 and b > 0]
    return statistics.median(ratios) if ratios else 1.0


@dataclass(frozen=True)
class VerifySettings:
    """How candidates are timed, and when a timing is trusted.

    ``rounds`` interleaved rounds visit every model in a fresh random order and make ``burst`` timed
    calls each (after ``settle`` untimed ones); a model's latency is the *minimum* of its per-round
    medians (timeit's advice: slower rounds are other work on the machine, not the model). A timing
    is not trusted with fewer than ``min_rounds`` rounds, or when the median of the per-round
    medians is more than ``max_spread`` above their minimum, or when the reference subnets disagree
    on the machine's speed by more than ``max_spread``. An untrusted batch is timed again, up to
    ``attempts`` times in all: other work on a shared machine comes in bursts (a build, another
    job's training), and a later attempt often finds a quieter minute.
    """

    rounds: int = 30
    burst: int = 20
    settle: int = 2
    warmup: int = 20
    min_rounds: int = 5
    max_spread: float = 0.5
    attempts: int = 3

    def __post_init__(self):
        if self.rounds < 1 or self.burst < 1 or self.min_rounds < 1 or self.max_spread < 0 or self.attempts < 1:
            raise ValueError(f"invalid verification settings: {self}")


@dataclass(frozen=True)
class RoundTiming:
    """One model's per-round medians (ms) from :func:`time_rounds`."""

    round_medians: tuple[float, ...]

    @property
    def best_ms(self) -> float:
        return min(self.round_medians)

    @property
    def spread(self) -> float:
        """How far the typical round is above the best one: median / minimum - 1."""
        import statistics

        best = self.best_ms
        return statistics.median(self.round_medians) / best - 1.0 if best > 0 else float("inf")


def time_rounds(paths: list[Path], device, settings: VerifySettings, seed: int = 1) -> list[RoundTiming]:
    """Per-round medians of exported models, timed interleaved (:func:`~nasprune.latency.timing.interleave_calls`,
    as latency tables are) in sessions made as for ``device``."""
    sessions = [make_session(p, device.threads, device.provider) for p in paths]
    feeds = [feed_for(s, device.batch_size) for s in sessions]
    calls = interleave_calls(
        sessions, feeds, settings.rounds, settings.burst, settings.settle, settings.warmup, seed=seed
    )
    return [RoundTiming(tuple(float(m) for m in np.median(c, axis=1))) for c in calls]


def distrust(
    candidates: list[RoundTiming], references: list[tuple[RoundTiming, float]], settings: VerifySettings
) -> tuple[str | None, list[str | None]]:
    """Why the timing cannot be trusted: for the whole batch (first) and per candidate; None where it can.

    ``references`` pairs each reference subnet's timing now with its table latency.
    """
    n = min((len(t.round_medians) for t in [*candidates, *(r for r, _ in references)]), default=0)
    if n < settings.min_rounds:
        why = (
            f"only {n} timing round(s): at least {settings.min_rounds} are needed to tell a quiet round from a busy one"
        )
        return why, [why] * len(candidates)
    batch = None
    for ref, _ in references:
        if ref.spread > settings.max_spread:
            batch = (
                f"a reference subnet's rounds spread {ref.spread:.0%} above its fastest round (the limit is "
                f"{settings.max_spread:.0%}): the machine was too busy to measure"
            )
            break
    ratios = [r.best_ms / then for r, then in references if then > 0 and r.best_ms > 0]
    if batch is None and len(ratios) > 1 and max(ratios) / min(ratios) > 1 + settings.max_spread:
        batch = (
            f"the reference subnets ran at {min(ratios):.2f}x to {max(ratios):.2f}x their table latency: "
            "the machine's speed was not consistent enough to correct for"
        )
    per = []
    for t in candidates:
        if batch is not None:
            per.append(batch)
        elif t.spread > settings.max_spread:
            per.append(
                f"its rounds spread {t.spread:.0%} above its fastest round (the limit is {settings.max_spread:.0%}): "
                "the machine was too busy to measure it"
            )
        else:
            per.append(None)
    return batch, per


def too_few_rounds(settings: VerifySettings) -> bool:
    """Whether every attempt is bound to be distrusted for its round count alone (no point retrying)."""
    return settings.rounds < settings.min_rounds


def reference_subnets(table, supernet, folder: Path, n: int = 3) -> list[tuple[Path, float]]:
    """Up to ``n`` of the table's held-out subnets (spread over its range), exported, with the median
    latency the table measured for each."""
    samples = sorted(table.error.samples if table.error is not None else [], key=lambda s: s.measured_ms)
    if not samples:
        return []
    picks = [samples[round(i * (len(samples) - 1) / max(n - 1, 1))] for i in range(min(n, len(samples)))]
    picks = list({s.config.key(): s for s in picks}.values())
    folder.mkdir(parents=True, exist_ok=True)
    paths = export_all(supernet, [s.config for s in picks], folder)
    return [(p, s.measured_ms) for p, s in zip(paths, picks, strict=True)]
