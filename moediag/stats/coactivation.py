"""Co-activation: how often experts i and j are both in a token's top-k set (OLMoE sec. 5)."""

from __future__ import annotations

import torch

from moediag.blocked import row_slices
from moediag.stats.batch import LayerBatch

#: int8 GEMM blocks are padded with zero columns to a multiple of this many rows: the probe checks such
#: widths, and torch 2.13's CPU kernel returns garbage for a width of 1
INT_MM_ROWS = 64
_INT_MM: bool | None = None  # whether torch._int_mm is present and right here (probed once)


def _int_mm_works() -> bool:
    """Probe torch._int_mm once against float32 on random 0/1 matrices of the padded shapes we use."""
    global _INT_MM
    if _INT_MM is None:
        g = torch.Generator().manual_seed(0)
        try:
            _INT_MM = all(
                torch.equal(torch._int_mm(a, a.T).to(torch.int64), (a.float() @ a.float().T).round().long())
                for e, m in ((64, 4096), (60, 64), (8, 128), (256, 192), (1, 64), (3, 4096))
                for a in [(torch.rand(e, m, generator=g) < 0.3).to(torch.int8)]
            )
        except (AttributeError, RuntimeError, NotImplementedError):
            _INT_MM = False
    return _INT_MM


def _gram(ids: torch.Tensor, num_experts: int, empty: bool) -> torch.Tensor:
    """Pair counts of one block of ids [m, k] as int64 [E, E]: onehot.T @ onehot, exact.

    torch's int8 GEMM (int32 accumulation) is ~4x faster on CPU than float32 where the probe shows it is
    present and right; the block is then padded with zero rows to a multiple of :data:`INT_MM_ROWS`.
    Otherwise float32, exact while m < 2^24 (blocks are 4096 rows).
    """
    fast = _int_mm_works()
    m = ids.shape[0]
    width = -(-m // INT_MM_ROWS) * INT_MM_ROWS if fast else m
    onehot_t = torch.zeros(num_experts, width, dtype=torch.int8)  # built transposed: [E, rows]
    block = ids.T  # [k, m]
    if empty:  # empty slots add 0 (scatter_add: a 0 must not overwrite a 1)
        onehot_t[:, :m].scatter_add_(0, block.clamp_min(0), (block >= 0).to(torch.int8))
    else:
        onehot_t[:, :m].scatter_(0, block, 1)
    if fast:
        return torch._int_mm(onehot_t, onehot_t.T).to(torch.int64)
    f = onehot_t.float()
    return (f @ f.T).round().to(torch.int64)


class CoactivationStats:
    """Symmetric pair counts N[i, j] over all pairs of the top-k set; the diagonal holds N(i).

    co-activation(i, j) = N[i, j] / N(i) (row-normalised).
    """

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.pairs = torch.zeros(num_experts, num_experts, dtype=torch.int64)

    def update(self, batch: LayerBatch) -> None:
        ids = batch.ids
        e = self.num_experts
        k = ids.shape[1]
        if ids.numel() == 0:
            return
        if e * e <= 128 * k * k:
            # small E: one-hot Gram matrix, block by block (exact: integer GEMM, or float32 on 4096 rows)
            empty = not batch.filled and bool((ids < 0).any())
            gram = torch.zeros(e, e, dtype=torch.int64)
            for rows in row_slices(ids.shape[0]):  # a cache-sized one-hot block at a time
                gram += _gram(ids[rows], e, empty)
            self.pairs += gram
            return
        a_idx, b_idx = torch.triu_indices(k, k, offset=1)
        a, b = ids[:, a_idx].reshape(-1), ids[:, b_idx].reshape(-1)
        diag = ids.reshape(-1)
        if bool((diag < 0).any()):
            ok = (a >= 0) & (b >= 0)
            a, b = a[ok], b[ok]
            diag = diag[diag >= 0]
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        upper = torch.bincount(lo * e + hi, minlength=e * e).view(e, e)
        self.pairs += upper + upper.T + torch.diag(torch.bincount(diag, minlength=e))

    def merge(self, other: CoactivationStats) -> None:
        self.pairs += other.pairs

    def normalised(self) -> torch.Tensor:
        diag = self.pairs.diagonal().double().clamp_min(1)
        return self.pairs.double() / diag.unsqueeze(1)
