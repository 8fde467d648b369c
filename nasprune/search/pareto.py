"""Pareto fronts of (accuracy up, latency down) and their 2-D hypervolume."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (accuracy, latency) dominates ``b``: no worse in both, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_indices(points: Sequence[tuple[float, float]], keep_ties: bool = False) -> list[int]:
    """Indices of the non-dominated points, sorted by latency; of equal points the first seen, or all of
    them with ``keep_ties``."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    for i in order:
        if not front or points[i][0] > points[front[-1]][0] or (keep_ties and points[i] == points[front[-1]]):
            front.append(i)
    return front


def is_dominated(point: tuple[float, float], points: Sequence[tuple[float, float]]) -> bool:
    """Some point of ``points`` dominates ``point`` (an equal point does not)."""
    return any(dominates(p, point) for p in points)


def pareto_records(records: Sequence) -> list:
    """The records (``.accuracy``, ``.latency_ms``) that no other record dominates, by latency; records
    at the same point are all kept (two architectures can score and cost the same)."""
    points = [(r.accuracy, r.latency_ms) for r in records]
    return [records[i] for i in pareto_indices(points, keep_ties=True)]


def hypervolume(points: Sequence[tuple[float, float]], ref_latency: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the front, bounded by ``(ref_accuracy, ref_latency)`` (worst corner)."""
    pts = [points[i] for i in pareto_indices(points)]
    pts = [(a, lat) for a, lat in pts if lat < ref_latency and a > ref_accuracy]
    area = 0.0
    for k, (acc, lat) in enumerate(pts):
        next_lat = pts[k + 1][1] if k + 1 < len(pts) else ref_latency
        area += (acc - ref_accuracy) * (next_lat - lat)
    return area
