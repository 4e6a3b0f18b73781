"""Co-activation: how often experts i and j are both in a token's top-k set (OLMoE sec. 5)."""

from __future__ import annotations

import torch

from moediag.blocked import row_slices
from moediag.stats.batch import LayerBatch


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
        if e * e <= 128 * k * k and ids.shape[0] < (1 << 24):
            # small E: one-hot Gram matrix (exact in float32 while counts < 2^24, guaranteed by the row bound)
            empty = not batch.filled and bool((ids < 0).any())
            gram = torch.zeros(e, e, dtype=torch.float32)
            for rows in row_slices(ids.shape[0]):  # a cache-sized one-hot block at a time
                block = ids[rows]
                onehot = torch.zeros(block.shape[0], e, dtype=torch.float32)
                if empty:  # empty slots add 0 (scatter_add: a 0 must not overwrite a 1)
                    onehot.scatter_add_(1, block.clamp_min(0), (block >= 0).float())
                else:
                    onehot.scatter_(1, block, 1.0)
                gram.addmm_(onehot.T, onehot)
            self.pairs += gram.round().to(torch.int64)
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
