"""Per-expert accuracy: Wilson interval, attribution by hand, streaming = one-shot = merge."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.accuracy import ExpertAccuracyStats, newcombe, wilson
from moediag.stats.batch import LayerBatch


def batch(
    ids: list[list[int]], correct: list[int] | None, loss: list[float] | None = None, e: int = 4
) -> LayerBatch:
    t = torch.tensor(ids, dtype=torch.int64)
    b = LayerBatch(e, t.shape[1], t, t[:, 0].clone(), torch.arange(t.shape[0]))
    b.correct = None if correct is None else torch.tensor(correct, dtype=torch.bool)
    b.loss = None if loss is None else torch.tensor(loss, dtype=torch.float64)
    return b


def test_wilson_known_value() -> None:
    lo, hi = wilson(8, 10)
    assert lo is not None and hi is not None
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (None, None)
    lo, hi = wilson(0, 10)
    assert lo is not None and hi is not None
    assert lo == 0.0 and 0.27 < hi < 0.31
    lo, hi = wilson(10, 10)
    assert lo is not None and hi is not None
    assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73


def test_newcombe_zero_difference_straddles_zero() -> None:
    d, lo, hi = newcombe(50, 100, 50, 100)
    assert d is not None and lo is not None and hi is not None
    assert d == 0.0 and lo < 0 < hi
    d, lo, hi = newcombe(90, 100, 10, 100)
    assert hi is not None
    assert d == pytest.approx(-0.8) and hi < 0


def test_top1_and_topk_attribution_by_hand() -> None:
    # tokens: (top1, second, correct, loss)
    b = batch([[0, 1], [0, 2], [1, 0], [3, 2]], [1, 0, 1, 1], [1.0, 3.0, 0.5, float("nan")])
    s = ExpertAccuracyStats(4)
    s.update(b)
    out = s.compute()
    assert out["accuracy"] == 0.75
    top1 = {r["expert"]: r for r in out["expert_accuracy"]}
    assert (top1[0]["tokens"], top1[0]["correct"]) == (2, 1)
    assert top1[0]["mean_loss"] == 2.0
    assert (top1[1]["tokens"], top1[1]["correct"], top1[1]["mean_loss"]) == (1, 1, 0.5)
    assert top1[2]["tokens"] == 0 and top1[2]["accuracy"] is None
    assert top1[3]["mean_loss"] is None  # its only loss is NaN
    topk = {r["expert"]: r for r in out["expert_accuracy_topk"]}
    assert (topk[0]["tokens"], topk[0]["correct"]) == (3, 2)
    assert (topk[2]["tokens"], topk[2]["correct"]) == (2, 1)
    assert out["mean_loss"] == pytest.approx(4.5 / 3)


def test_below_overall_flag() -> None:
    # expert 0: 0/40 correct; expert 1: 160/160 -> overall 0.8; expert 0's interval is far below
    ids = [[0, 1]] * 40 + [[1, 0]] * 160
    s = ExpertAccuracyStats(4)
    s.update(batch(ids, [0] * 40 + [1] * 160))
    rows = s.compute()["expert_accuracy"]
    assert rows[0]["below_overall"] and not rows[1]["below_overall"]
    assert rows[0]["ci_high"] < 0.8


def test_absent_data_is_null() -> None:
    s = ExpertAccuracyStats(4)
    s.update(batch([[0, 1]], None))
    out = s.compute()
    assert out["expert_accuracy"] is None and out["expert_accuracy_topk"] is None and out["accuracy"] is None


def test_loss_only() -> None:
    s = ExpertAccuracyStats(4)
    s.update(batch([[0, 1], [0, 2]], None, [1.0, 2.0]))
    out = s.compute()
    assert out["accuracy"] is None and out["expert_accuracy"][0]["correct"] is None
    assert out["expert_accuracy"][0]["mean_loss"] == 1.5


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.lists(st.integers(0, 60), max_size=3))
def test_streaming_equals_one_shot_equals_merge(seed: int, n: int, cuts: list[int]) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(5, generator=g)[:2] for _ in range(n)])
    correct = (torch.rand(n, generator=g) < 0.6).tolist()
    loss = torch.rand(n, generator=g).double().tolist()
    full = batch(ids.tolist(), correct, loss, e=5)
    one = ExpertAccuracyStats(5)
    one.update(full)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    stream = ExpertAccuracyStats(5)
    merged = ExpertAccuracyStats(5)
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = full.select((torch.arange(n) >= a) & (torch.arange(n) < b))
        stream.update(part)
        piece = ExpertAccuracyStats(5)
        piece.update(part)
        merged.merge(piece)
    ref = one.compute()
    for other in (stream.compute(), merged.compute()):
        for key in ("expert_accuracy", "expert_accuracy_topk"):
            for x, y in zip(ref[key], other[key], strict=False):
                assert (x["tokens"], x["correct"]) == (y["tokens"], y["correct"])
                if x["mean_loss"] is not None:
                    assert math.isclose(x["mean_loss"], y["mean_loss"], rel_tol=1e-12)
        assert ref["accuracy"] == other["accuracy"]
