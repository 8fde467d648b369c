"""Pareto fronts of (accuracy up, latency down) and their 2-D hypervolume."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (accuracy, latency) dominates ``b``: no worse in both, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, sorted by latency; ties keep the first seen."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front, best_acc = [], float("-inf")
    for i in order:
        if points[i][0] > best_acc:
            front.append(i)
            best_acc = points[i][0]
    return front


def hypervolume(points: Sequence[tuple[float, float]], ref_latency: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the front, bounded by ``(ref_accuracy, ref_latency)`` (worst corner)."""
    pts = [points[i] for i in pareto_indices(points)]
    pts = [(a, lat) for a, lat in pts if lat < ref_latency and a > ref_accuracy]
    area = 0.0
    for k, (acc, lat) in enumerate(pts):
        next_lat = pts[k + 1][1] if k + 1 < len(pts) else ref_latency
        area += (acc - ref_accuracy) * (next_lat - lat)
    return area
