"""Co-activation: how often experts i and j are both in a token's top-k set (OLMoE sec. 5)."""

from __future__ import annotations

import torch

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
        flat = torch.zeros(e * e, dtype=torch.int64)
        for a in range(k):
            ia = ids[:, a]
            ok = ia >= 0
            flat += torch.bincount(ia[ok] * e + ia[ok], minlength=e * e)
            for b in range(a + 1, k):
                ib = ids[:, b]
                ok2 = ok & (ib >= 0)
                flat += torch.bincount(ia[ok2] * e + ib[ok2], minlength=e * e)
                flat += torch.bincount(ib[ok2] * e + ia[ok2], minlength=e * e)
        self.pairs += flat.view(e, e)

    def merge(self, other: CoactivationStats) -> None:
        self.pairs += other.pairs

    def normalised(self) -> torch.Tensor:
        diag = self.pairs.diagonal().double().clamp_min(1)
        return self.pairs.double() / diag.unsqueeze(1)
