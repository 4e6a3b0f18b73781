"""unique_rows: the packed-radix replacement for torch.unique(dim=0) must agree with it exactly."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.sketch import unique_rows


def _torch_unique(keys: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.unique(keys, dim=0, return_inverse=True, return_counts=True)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 300),
    width=st.integers(1, 20),
    low=st.integers(-(1 << 20), 0),
    span=st.sampled_from([1, 2, 3, 65, 257, 1 << 16, 1 << 31, 1 << 40, 1 << 62]),
    seed=st.integers(0, 2**31 - 1),
    repeats=st.integers(0, 50),
)
def test_unique_rows_equals_torch_unique(
    n: int, width: int, low: int, span: int, seed: int, repeats: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    keys = low + torch.randint(0, span, (n, width), generator=g, dtype=torch.int64)
    if repeats:  # make duplicates likely whatever the span
        src = torch.randint(0, n, (repeats,), generator=g)
        keys[torch.randint(0, n, (repeats,), generator=g)] = keys[src]
    got, want = unique_rows(keys), _torch_unique(keys)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_unique_rows_hand_case() -> None:
    keys = torch.tensor([[2, -1], [0, 5], [2, -1], [0, 4], [0, 5]])
    uniq, inverse, counts = unique_rows(keys)
    assert uniq.tolist() == [[0, 4], [0, 5], [2, -1]]
    assert inverse.tolist() == [2, 1, 2, 0, 1]
    assert counts.tolist() == [1, 2, 2]


def test_unique_rows_empty() -> None:
    uniq, inverse, counts = unique_rows(torch.zeros(0, 3, dtype=torch.int64))
    assert uniq.shape == (0, 3) and inverse.numel() == 0 and counts.numel() == 0
