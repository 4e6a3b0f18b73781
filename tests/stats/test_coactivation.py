"""Co-activation pair counts against a loop over every pair of each token's top-k set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
