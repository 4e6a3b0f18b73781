"""Cache-sized row blocks: the same results as one pass over the whole tensor."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.blocked import BLOCK_ROWS, column_sums, per_row, row_slices


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3 * BLOCK_ROWS + 7), rows=st.integers(1, 5000))
def test_row_slices_cover_every_row_once(n: int, rows: int) -> None:
    seen = [i for s in row_slices(n, rows) for i in range(n)[s]]
    assert seen == list(range(n))


def test_column_sums_equal_float64_sum() -> None:
    x = torch.rand(2 * BLOCK_ROWS + 123, 17, generator=torch.Generator().manual_seed(0))
    want = x.double().sum(0)
    torch.testing.assert_close(column_sums(x), want, rtol=1e-13, atol=0)
    assert column_sums(x[:0]).tolist() == [0.0] * 17


def test_per_row_is_bit_identical_to_one_pass() -> None:
    g = torch.Generator().manual_seed(1)
    p, z = torch.rand(3 * BLOCK_ROWS + 5, 64, generator=g), torch.randn(3 * BLOCK_ROWS + 5, 64, generator=g)

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=1)

    assert torch.equal(per_row(dot, p, z), dot(p, z))
    assert torch.equal(per_row(dot, p[:10], z[:10]), dot(p[:10], z[:10]))
