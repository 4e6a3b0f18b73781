"""Specialisation: domain shares and score by hand, vocabulary concentration, merges."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.batch import LayerBatch
from moediag.stats.specialisation import SpecialisationStats, tv_distance


def batch(
    ids: list[list[int]], domain: list[int] | None = None, input_ids: list[int] | None = None, e: int = 4
) -> LayerBatch:
    t = torch.tensor(ids, dtype=torch.int64)
    b = LayerBatch(e, t.shape[1], t, t[:, 0].clone(), torch.arange(t.shape[0]))
    b.domain = None if domain is None else torch.tensor(domain)
    b.input_ids = None if input_ids is None else torch.tensor(input_ids)
    return b


def test_domain_shares_and_score_by_hand() -> None:
    # domain 0 always uses experts {0, 1}, domain 1 always {2, 3}: disjoint -> TV 0.5 each from the mix
    s = SpecialisationStats(4, 2)
    s.update(batch([[0, 1], [0, 1], [2, 3], [3, 2]], domain=[0, 0, 1, 1]))
    out = s.compute()
    assert out["baseline"] == 0.5
    d0, d1 = out["domains"]
    assert d0["shares"] == [1.0, 1.0, 0.0, 0.0] and d1["shares"] == [0.0, 0.0, 1.0, 1.0]
    assert d0["tv_distance"] == pytest.approx(0.5) and out["score"] == pytest.approx(0.5)


def test_same_routing_in_every_domain_scores_zero() -> None:
    s = SpecialisationStats(4, 1)
    s.update(batch([[0], [1], [0], [1]], domain=[0, 0, 2, 2]))
    out = s.compute()
    assert out["score"] == 0.0
    assert [d["domain"] for d in out["domains"]] == [0, 2]  # domain 1 has no tokens


def test_absent_data_is_null() -> None:
    s = SpecialisationStats(4, 1)
    s.update(batch([[0], [1]]))
    out = s.compute()
    assert out["domains"] is None and out["score"] is None and out["vocabulary"] is None


def test_vocabulary_concentration() -> None:
    # id 7: 10 times, always expert 2 (top-1 of k=1) -> concentration 1; id 8: 10 times, split 5/5 -> 0.5;
    # id 9: 3 times (below 10, not reported)
    ids = [[2]] * 10 + [[0]] * 5 + [[1]] * 5 + [[3]] * 3
    s = SpecialisationStats(4, 1)
    s.update(batch(ids, input_ids=[7] * 10 + [8] * 10 + [9] * 3))
    v = s.compute()["vocabulary"]
    assert v["ids"] == 2 and v["exact"]
    assert v["mean_concentration"] == pytest.approx(0.75)
    assert v["top"][0] == {"input_id": 7, "occurrences": 10, "expert": 2, "share": 1.0}


def test_tv_distance() -> None:
    assert tv_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 80), st.lists(st.integers(0, 80), max_size=3))
def test_streaming_equals_one_shot_equals_merge(seed: int, n: int, cuts: list[int]) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(n)])
    dom = torch.randint(0, 3, (n,), generator=g)
    tok = torch.randint(0, 5, (n,), generator=g)
    full = batch(ids.tolist(), dom.tolist(), tok.tolist(), e=6)
    one = SpecialisationStats(6, 2)
    one.update(full)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    stream, merged = SpecialisationStats(6, 2), SpecialisationStats(6, 2)
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = full.select((torch.arange(n) >= a) & (torch.arange(n) < b))
        stream.update(part)
        piece = SpecialisationStats(6, 2)
        piece.update(part)
        merged.merge(piece)
    ref = one.compute(min_occurrences=1)
    for other in (stream.compute(min_occurrences=1), merged.compute(min_occurrences=1)):
        assert other["domains"] == ref["domains"]
        assert other["score"] == pytest.approx(ref["score"])
        assert other["vocabulary"]["ids"] == ref["vocabulary"]["ids"]
        assert other["vocabulary"]["mean_concentration"] == pytest.approx(
            ref["vocabulary"]["mean_concentration"]
        )
