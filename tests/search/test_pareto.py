from types import SimpleNamespace

import numpy as np

from nasprune.search.pareto import dominates, hypervolume, is_dominated, pareto_indices, pareto_records


def test_front_is_exactly_the_non_dominated_set():
    rng = np.random.default_rng(0)
    pts = [(float(a), float(lat)) for a, lat in zip(rng.random(200), rng.random(200), strict=True)]
    front = set(pareto_indices(pts))
    for i, p in enumerate(pts):
        dominated = any(dominates(q, p) for q in pts)
        assert (i in front) == (not dominated)


def test_record_front_is_the_non_dominated_records_ties_kept():
    """Records on a coarse grid (accuracies and latencies repeat), so equal points and equal
    accuracies at different latencies occur: every record that no other dominates is kept, once."""
    rng = np.random.default_rng(1)
    recs = [SimpleNamespace(accuracy=int(a) / 10, latency_ms=int(b) / 4) for a, b in rng.integers(0, 8, (300, 2))]
    front = pareto_records(recs)
    pts = [(r.accuracy, r.latency_ms) for r in recs]
    assert sorted(map(id, front)) == sorted(id(r) for r in recs if not is_dominated((r.accuracy, r.latency_ms), pts))
    assert [r.latency_ms for r in front] == sorted(r.latency_ms for r in front)
    assert len({(r.accuracy, r.latency_ms) for r in front}) < len(front)  # the grid made ties, and they stay


def test_front_sorted_by_latency_with_rising_accuracy():
    pts = [(0.9, 2.0), (0.95, 3.0), (0.8, 1.0), (0.85, 2.5), (0.99, 5.0)]
    front = pareto_indices(pts)
    assert front == [2, 0, 1, 4]


def test_hypervolume_of_known_fronts():
    assert hypervolume([(0.5, 1.0)], ref_latency=3.0) == 0.5 * 2.0
    # two steps: 0.5 over [1,2) plus 0.8 over [2,3)
    assert abs(hypervolume([(0.5, 1.0), (0.8, 2.0)], ref_latency=3.0) - (0.5 + 0.8)) < 1e-12
    # a dominated point adds nothing; a point beyond the reference adds nothing
    assert hypervolume([(0.5, 1.0), (0.4, 1.5), (0.9, 4.0)], ref_latency=3.0) == 1.0


def test_the_plot_draws_int8_candidates_where_they_are(tmp_path):
    """int8 front points are drawn at their own (int8 latency, quantized accuracy), and the star of an
    int8 recommendation sits there too, not on its trial's fp32 point: the pixels differ from a plot
    of the same trials without them."""
    from PIL import Image

    from nasprune.search.plot import pareto_plot
    from nasprune.search.study import TrialRecord

    def trial(i: int) -> TrialRecord:
        acc, ms = 0.80 + 0.01 * i, 1.0 + 0.2 * i
        return TrialRecord(number=i, subnet_key=f"k{i}", config={}, accuracy=acc, latency_ms=ms, params=100,
                           macs=100, feasible=i < 8)  # fmt: skip

    trials = [trial(i) for i in range(10)]
    plain = pareto_plot(trials, {5, 6, 7}, 2.5, 7, tmp_path / "fp32.png")
    mixed = pareto_plot(trials, {5, 6, 7}, 2.5, 7, tmp_path / "mixed.png", int8=[(0.9, 0.86)],
                        chosen_point=(0.9, 0.86))  # fmt: skip
    a = np.asarray(Image.open(plain).convert("RGB"), dtype=int)
    b = np.asarray(Image.open(mixed).convert("RGB"), dtype=int)
    assert a.shape == b.shape and (np.abs(a - b).sum(axis=2) > 0).sum() > 100
