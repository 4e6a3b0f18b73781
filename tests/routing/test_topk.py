"""moediag.routing.topk.topk_indices: the same ids in the same order as torch.topk, ties included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.routing.topk import ordered_keys, topk_indices


def _tied(seed: int, n: int, e: int, levels: int, signed: bool) -> torch.Tensor:
    """Scores drawn from few distinct values, so most rows have ties at the top-k boundary."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(levels, generator=g)
    if signed:
        values = torch.cat([values - 0.5, torch.tensor([0.0, -0.0, float("inf"), float("-inf")])])
    return values[torch.randint(0, values.numel(), (n, e), generator=g)]


@pytest.mark.parametrize("e", [2, 8, 64, 130, 256])
@pytest.mark.parametrize("signed", [False, True])
def test_same_ids_as_torch_topk_with_ties(e: int, signed: bool) -> None:
    for levels in (2, 5, 1000):
        x = _tied(e * levels, 3000, e, levels, signed)
        for k in {1, 2, min(e, 3), min(e, 9), e // 2 or 1, e}:
            expected = x.topk(k, dim=-1).indices
            assert torch.equal(topk_indices(x, k, nonnegative=not signed), expected), (e, k, levels)
            assert torch.equal(topk_indices(x, k), expected), (e, k, levels)


def test_softmax_probabilities_use_their_bits() -> None:
    z = torch.randn(5000, 64, generator=torch.Generator().manual_seed(1)).bfloat16().float()
    p = torch.softmax(z, dim=-1)
    assert torch.equal(topk_indices(p, 9, nonnegative=True), p.topk(9, dim=-1).indices)
    assert ordered_keys(p, nonnegative=True).data_ptr() == p.data_ptr()  # a view, no copy


def test_keys_order_like_the_floats() -> None:
    x = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = ordered_keys(x)
    assert torch.equal(keys[3], keys[4])  # -0.0 == 0.0
    strict = torch.cat([keys[1:4] > keys[:3], keys[5:] > keys[4:-1]])
    assert bool(strict.all())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.sampled_from([-2.0, -0.0, 0.0, 0.25, 0.5, 1.0, float("-inf")]), min_size=6, max_size=6),
        min_size=1,
        max_size=40,
    ),
    k=st.integers(1, 6),
)
def test_property_same_as_topk(rows: list[list[float]], k: int) -> None:
    x = torch.tensor(rows, dtype=torch.float32)
    assert torch.equal(topk_indices(x, k), x.topk(k, dim=-1).indices)


def test_other_dtypes_use_torch_topk() -> None:
    x = torch.randn(10, 8, dtype=torch.float64)
    assert torch.equal(topk_indices(x, 3), x.topk(3, dim=-1).indices)
