"""Robust selection among front candidates (nasprune.search.select) on constructed per-example results."""

from __future__ import annotations

import pytest
import torch

from nasprune.evaluate import PerExample
from nasprune.paths import job_files
from nasprune.search.select import mcnemar_worse, rank, wilson


def _ex(correct: list[bool], loss: float) -> PerExample:
    c = torch.tensor(correct)
    return PerExample(c, torch.full((len(c),), loss, dtype=torch.float64))


N = 500
REF = [True] * 490 + [False] * 10  # 98.0%


def _flip(base: list[bool], wrong: int, right: int = 0) -> list[bool]:
    """``base`` with its first ``wrong`` right answers made wrong and ``right`` wrong ones made right."""
    out = list(base)
    for i in range(wrong):
        out[i] = False
    for i in range(490, 490 + right):
        out[i] = True
    return out


def test_wilson_interval_contains_the_estimate_and_stays_in_bounds():
    lo, hi = wilson(490, 500)
    assert lo < 0.98 < hi and hi - lo < 0.04
    lo, hi = wilson(500, 500)
    assert hi == 1.0 and 0.99 < lo < 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_only_counts_the_images_the_two_disagree_on():
    ref = torch.tensor(REF)
    assert mcnemar_worse(ref, ref) == 1.0
    assert mcnemar_worse(torch.tensor(_flip(REF, 2)), ref) > 0.2  # 2 of 500: noise
    assert mcnemar_worse(torch.tensor(_flip(REF, 15)), ref) < 0.001  # 15 lost, none won
    assert mcnemar_worse(torch.tensor(_flip(REF, 15, right=10)), ref) > 0.2  # 15 lost, 10 won


def test_tied_candidates_are_ordered_by_validation_loss_and_the_rest_by_accuracy():
    items = {
        "best": (_ex(REF, 0.20), 0.9),  # most accurate within budget: the reference
        "tied_low_loss": (_ex(_flip(REF, 2), 0.10), 0.8),  # 1 image... 2 worse, confidently right elsewhere
        "worse_lowest_loss": (_ex(_flip(REF, 20), 0.05), 0.5),  # significantly worse, lowest loss
        "over_budget": (_ex(_flip(REF, 0, right=10), 0.01), 1.5),  # best of all, but over the budget
    }
    names = list(items)

    def order(rule):
        return [(n, s) for n, s in rank(names, lambda n: items[n][0], lambda n: items[n][1], 1.0, rule=rule)]

    ranked = order("loss-tied")
    assert [n for n, _ in ranked] == ["tied_low_loss", "best", "worse_lowest_loss", "over_budget"]
    sel = dict(ranked)
    assert sel["best"].p_worse is None and sel["best"].tied
    assert sel["tied_low_loss"].tied and sel["tied_low_loss"].p_worse > 0.05
    assert not sel["worse_lowest_loss"].tied and sel["worse_lowest_loss"].p_worse < 0.001
    assert [s.rank for _, s in ranked] == [0, 1, 2, 3]
    assert sel["best"].accuracy == pytest.approx(0.98)
    assert sel["best"].se == pytest.approx((0.98 * 0.02 / N) ** 0.5)
    assert sel["best"].loss == pytest.approx(0.20)
    assert [n for n, _ in order("accuracy")] == ["best", "tied_low_loss", "worse_lowest_loss", "over_budget"]
    assert [n for n, _ in order("loss")] == ["worse_lowest_loss", "tied_low_loss", "best", "over_budget"]
    with pytest.raises(ValueError, match="unknown selection rule"):
        order("luck")


def test_when_nothing_fits_the_budget_the_order_is_still_defined():
    items = {"a": (_ex(REF, 0.2), 2.0), "b": (_ex(_flip(REF, 1), 0.1), 3.0)}
    ranked = rank(list(items), lambda n: items[n][0], lambda n: items[n][1], 1.0, rule="loss-tied")
    assert [n for n, _ in ranked] == ["b", "a"]  # tied with the most accurate, lower loss


def test_the_default_rule_prefers_the_slowest_of_the_tied_candidates():
    """largest-tied: a smaller candidate comes first only when the larger ones are shown to be worse."""
    items = {
        "best": (_ex(REF, 0.2), 0.5),  # most accurate, half the budget
        "tied_larger": (_ex(_flip(REF, 2), 0.1), 0.95),  # 2 images worse of 500: tied, uses the budget
        "tied_mid": (_ex(_flip(REF, 1), 0.1), 0.7),
        "worse_largest": (_ex(_flip(REF, 20), 0.3), 0.99),  # significantly worse: after every tied one
    }
    names = list(items)
    ranked = [n for n, _ in rank(names, lambda n: items[n][0], lambda n: items[n][1], 1.0)]
    assert ranked == ["tied_larger", "tied_mid", "best", "worse_largest"]
    by_acc = [n for n, _ in rank(names, lambda n: items[n][0], lambda n: items[n][1], 1.0, rule="accuracy")]
    assert by_acc == ["best", "tied_mid", "tied_larger", "worse_largest"]


def test_of_the_fine_tuned_candidates_the_slowest_tied_one_is_delivered(tmp_path):
    """After fine-tuning the top candidates, ``largest-tied`` hands out the slowest one that validation
    cannot show to be worse than the most accurate (paired test), not the one that got an image or two
    more right; a candidate that is shown worse is not delivered however slow; ``accuracy`` keeps the
    most accurate."""
    import onnx
    from onnx import TensorProto, helper

    from nasprune.export import read_metadata
    from nasprune.search.job import Candidate
    from nasprune.search.recover import pick_delivered

    (tmp_path / "models").mkdir()
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])  # fmt: skip
    n = 6000
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, generator=g) < 0.90
    tied = base.clone()
    tied[torch.nonzero(base)[:2, 0]] = False  # two images fewer: a tie at 6,000 images
    worse = base.clone()
    worse[torch.nonzero(base)[:150, 0]] = False  # 2.5 pt fewer: shown worse

    def cand(cid: str, correct: torch.Tensor, ms: float) -> Candidate:
        onnx.save(helper.make_model(graph), str(tmp_path / "models" / f"{cid * 16}.finetuned.onnx"))
        return Candidate(candidate_id=cid * 16, trial_number=1, config={}, accuracy=float(correct.float().mean()),
                         latency_ms=ms, measured_latency_ms=ms, params=1, macs=1, feasible=True,
                         delivered="fine-tuned")  # fmt: skip

    best, slow_tied, slowest_worse = cand("a", base, 0.10), cand("b", tied, 0.12), cand("c", worse, 0.13)
    tuned = [best, slow_tied, slowest_worse]
    correct = {best.candidate_id: base, slow_tied.candidate_id: tied, slowest_worse.candidate_id: worse}
    assert pick_delivered(tuned, job_files(tmp_path), "largest-tied", correct) is slow_tied
    assert read_metadata(tmp_path / "model.onnx")["finetuned_candidates"] == "3"
    assert pick_delivered(tuned, job_files(tmp_path), "accuracy", correct) is best
    no_images = {**correct, best.candidate_id: None}  # int8: no per-image results, the most accurate
    assert pick_delivered(tuned, job_files(tmp_path), "largest-tied", no_images) is best
