"""Cache-sized row blocks for the per-token passes over ``[n, E]`` tensors.

A chunk is large (32k tokens) so that Python's per-call overhead stays small, but a single float32
``[32k, 64]`` tensor is 8 MB, and an elementwise chain over it (shift, multiply, reduce) streams every
temporary through memory. Running such chains over blocks of :data:`BLOCK_ROWS` rows keeps the temporaries
in cache: 2-10x faster on the hot paths, with bit-identical per-row results (each row is reduced on its
own either way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

#: rows per block: 4096 x 64 float32 = 1 MB
BLOCK_ROWS = 4096


def row_slices(n: int, rows: int = BLOCK_ROWS) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, ``rows`` at a time."""
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(0, dtype=float64)`` block by block: the same sums up to float64 rounding, ~2.5x faster on
    ``[32k, 64]`` than one pass (a float64 reduction over a tensor larger than the cache is memory-bound)."""
    out = torch.zeros(x.shape[1:], dtype=torch.float64)
    for rows in row_slices(x.shape[0]):
        out += x[rows].sum(0, dtype=torch.float64)
    return out


def per_row(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` for a function that maps row-aligned tensors to one value per row, block by block."""
    n = tensors[0].shape[0]
    if n <= BLOCK_ROWS:
        return fn(*tensors)
    parts = [fn(*(t[rows] for t in tensors)) for rows in row_slices(n)]
    return torch.cat(parts)
