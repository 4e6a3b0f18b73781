"""Co-activation pair counts against a loop over every pair of each token's top-k set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.analysis import analyze_trace
from moediag.stats.batch import LayerBatch
from moediag.stats.coactivation import CoactivationStats
from tests import _reference as ref
from tests.conftest import random_tensors, trace_metadata


def test_hand_computed() -> None:
    ids = torch.tensor([[0, 1, 2], [1, 2, 3], [0, 1, -1]])
    s = CoactivationStats(4)
    s.update(LayerBatch(4, 3, ids, ids[:, 0], torch.arange(3)))
    want = [
        [2, 2, 1, 0],
        [2, 3, 2, 1],
        [1, 2, 2, 1],
        [0, 1, 1, 1],
    ]
    assert s.pairs.tolist() == want
    norm = s.normalised()
    assert norm[1, 2].item() == pytest.approx(2 / 3)  # N(1 and 2) / N(1)
    assert norm[3, 0].item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_random_matches_loop(make_trace, seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = int(rng.integers(3, 12))
    k = int(rng.integers(1, min(e, 5) + 1))
    tensors = random_tensors(seed, tokens=70, num_experts=e, top_k=k, layers=(0,), ids=True, logits=False)
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, None)), chunk_tokens=8)
    got = a.to_dict(detail=True)["layers"][0]["coactivation"]
    assert got == ref.coactivation(tensors["layers.0.topk_ids"].numpy(), e)


def test_merge_adds() -> None:
    ids = torch.tensor([[0, 1], [1, 2], [2, 0]])
    whole = CoactivationStats(3)
    whole.update(LayerBatch(3, 2, ids, ids[:, 0], torch.arange(3)))
    a, b = CoactivationStats(3), CoactivationStats(3)
    a.update(LayerBatch(3, 2, ids[:1], ids[:1, 0], torch.arange(1)))
    b.update(LayerBatch(3, 2, ids[1:], ids[1:, 0], torch.arange(1, 3)))
    a.merge(b)
    assert torch.equal(a.pairs, whole.pairs)


@pytest.mark.parametrize("int_mm", [True, False])
@pytest.mark.parametrize(("e", "k", "empty"), [(8, 2, False), (60, 4, True), (64, 8, False), (256, 8, True)])
@pytest.mark.parametrize("n", [8193, 4103, 5])  # block tails of 1 and 7 rows, and one short block
def test_gram_paths_agree_with_pair_loop(
    monkeypatch, int_mm: bool, e: int, k: int, empty: bool, n: int
) -> None:
    """Integer GEMM, its float32 fallback and the pair-bincount path (large E) all equal the pair loop,
    over more rows than one block and with empty slots."""
    import moediag.stats.coactivation as co

    monkeypatch.setattr(co, "_INT_MM", None if int_mm else False)
    if int_mm and not co._int_mm_works():  # noqa: SIM102
        pytest.skip("no trustworthy torch._int_mm in this torch build")
    g = torch.Generator().manual_seed(e + k)
    ids = torch.rand(n, e, generator=g).topk(k, dim=-1).indices
    if empty:
        ids[torch.rand(n, k, generator=g) < 0.1] = -1
    s = CoactivationStats(e)
    s.update(LayerBatch(e, k, ids, ids[:, 0], torch.arange(n)))
    want = np.zeros((e, e), dtype=np.int64)
    for row in ids.tolist():
        chosen = [x for x in row if x >= 0]
        for a in chosen:
            for b in chosen:
                want[a, b] += 1
    assert s.pairs.tolist() == want.tolist()


# -- above DENSE_MAX_EXPERTS: exact N(i) + a bounded, mergeable table of pair counters ------------------


def _batch(ids: torch.Tensor, e: int) -> LayerBatch:
    return LayerBatch(e, ids.shape[1], ids, ids[:, 0], torch.arange(ids.shape[0]))


def _random_ids(seed: int, n: int, e: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])


def test_sparse_form_equals_dense_while_under_the_cap() -> None:
    ids = _random_ids(0, 200, 12, 3)
    ids[5, 2] = -1  # an empty slot adds nothing
    dense, sparse = CoactivationStats(12), CoactivationStats(12, dense_max=4)
    assert dense.dense and not sparse.dense
    dense.update(_batch(ids, 12))
    sparse.update(_batch(ids, 12))
    assert sparse.exact and torch.equal(sparse.pairs, dense.pairs)
    assert sparse.pairs.tolist() == ref.coactivation(ids.numpy(), 12)
    doc = sparse.to_json()
    assert (
        isinstance(doc, dict) and doc["max_error"] == 0 and doc["diagonal"] == dense.pairs.diagonal().tolist()
    )
    for i, j, n in doc["pairs"]:
        assert i < j and n == dense.pairs[i, j] > 0


def test_the_default_bounds_e8192_state_by_the_data() -> None:
    ids = _random_ids(1, 1024, 8192, 8)
    s = CoactivationStats(8192)
    s.update(_batch(ids, 8192))
    assert not s.dense and s.exact
    assert s.keys.numel() <= 1024 * 28 and s.diagonal.sum() == 1024 * 8


def test_pruned_counts_are_underestimates_within_max_error() -> None:
    """Misra-Gries guarantee: true - max_error <= kept <= true for every pair; kept counters <= the cap."""
    g = torch.Generator().manual_seed(2)
    e, cap = 40, 30
    # skewed choices: a few heavy pairs and a long tail
    ids = torch.stack(
        [torch.multinomial(0.7 ** torch.arange(e, dtype=torch.float), 2, generator=g) for _ in range(3000)]
    )
    exact = CoactivationStats(e)
    exact.update(_batch(ids, e))
    parts = [CoactivationStats(e, dense_max=0, max_pairs=cap) for _ in range(3)]
    for part, rows in zip(parts, torch.tensor_split(ids, 3), strict=True):
        for chunk in torch.tensor_split(rows, 7):
            part.update(_batch(chunk, e))
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    assert merged.keys.numel() <= cap and merged.max_error > 0
    kept, true = merged.pairs, exact.pairs
    assert torch.equal(kept.diagonal(), true.diagonal())  # N(i) stays exact
    off = ~torch.eye(e, dtype=torch.bool)
    assert bool((kept[off] <= true[off]).all()) and bool((kept[off] >= true[off] - merged.max_error).all())
    # the bound is useful: every pair more frequent than max_error is kept, and there are such pairs
    heavy = off & (true > merged.max_error)
    assert bool(heavy.any()) and bool((kept[heavy] > 0).all())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_sparse_streaming_equals_one_shot_equals_merge(seed: int, k: int, sizes: list[int]) -> None:
    e = 9
    ids = _random_ids(seed, sum(sizes), e, k)
    one = CoactivationStats(e, dense_max=0)
    one.update(_batch(ids, e))
    streamed = CoactivationStats(e, dense_max=0)
    parts = []
    for rows in torch.split(ids, sizes):
        streamed.update(_batch(rows, e))
        p = CoactivationStats(e, dense_max=0)
        p.update(_batch(rows, e))
        parts.append(p)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    for s in (streamed, merged):
        assert torch.equal(s.keys, one.keys) and torch.equal(s.counts, one.counts)
        assert torch.equal(s.diagonal, one.diagonal) and s.exact


def test_peak_rss_at_8192_experts_stays_under_1_5_gb() -> None:
    """The issue's measurement: E = 8192, 1,024 tokens, top-8 (was 2.85 GB for inspect, over 6 GB with
    --detail); each command in its own process, peak RSS from getrusage."""
    from tests.fuzz.hostile import peak_rss_e8192

    peaks = peak_rss_e8192()
    assert set(peaks) == {"inspect", "inspect --json --detail"}
    assert all(gib < 1.5 for gib in peaks.values()), peaks


def test_among_is_the_submatrix_in_both_forms() -> None:
    ids = _random_ids(3, 300, 20, 4)
    dense, sparse = CoactivationStats(20), CoactivationStats(20, dense_max=0)
    dense.update(_batch(ids, 20))
    sparse.update(_batch(ids, 20))
    pick = torch.tensor([1, 4, 5, 11, 19])
    want = dense.pairs[pick][:, pick]
    assert torch.equal(dense.among(pick), want) and torch.equal(sparse.among(pick), want)
