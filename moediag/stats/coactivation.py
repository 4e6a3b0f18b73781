"""Co-activation: how often experts i and j are both in a token's top-k set (OLMoE sec. 5)."""

from __future__ import annotations

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.blocked import row_slices
from moediag.stats.state import Accumulator

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


#: exact dense [E, E] int64 pair counts up to this many experts (8 MiB per layer at the limit)
DENSE_MAX_EXPERTS = 1024
#: above it, at most this many distinct pair counters per layer (16 MiB), kept as a Misra-Gries summary
MAX_PAIRS = 1 << 20


class CoactivationStats(Accumulator):
    """Symmetric pair counts N[i, j] over all pairs of the top-k set; the diagonal holds N(i).

    co-activation(i, j) = N[i, j] / N(i) (row-normalised).

    Memory is bounded whatever E claims: up to :data:`DENSE_MAX_EXPERTS` experts the counts are one dense
    exact [E, E] matrix. Above it, N(i) stays exact ([E]) and the pairs i < j are a sparse table of at most
    ``max_pairs`` counters: exact while the data has no more distinct pairs than that; past it, a
    mergeable Misra-Gries summary (Agarwal et al. 2012): the counters are reduced by the (max_pairs+1)-th
    largest count, so every pair count is an underestimate by at most :attr:`max_error`, which the JSON
    reports (docs/metrics.md).

    Declared state (moediag.stats.state): the dense matrix, or the exact diagonal and ``max_error``, merged
    generically; the sparse counters (``keys``, ``counts``) are ``custom``: :meth:`merge_custom` adds the
    other side's counters and shrinks the table back to ``max_pairs`` (which can raise ``max_error``), so it
    runs after the generic fields.
    """

    num_experts: int
    dense: bool
    max_pairs: int
    max_error: int
    _pairs: torch.Tensor
    diagonal: torch.Tensor
    keys: torch.Tensor
    counts: torch.Tensor

    def __init__(
        self, num_experts: int, *, dense_max: int = DENSE_MAX_EXPERTS, max_pairs: int = MAX_PAIRS
    ) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_setting("dense", num_experts <= dense_max)
        self.add_setting("max_pairs", max_pairs)
        #: the largest amount any one pair count may be short by (0 = exact)
        self.add_state("max_error", 0)
        if self.dense:
            self.add_state("_pairs", torch.zeros(num_experts, num_experts, dtype=torch.int64))
        else:
            self.add_state("diagonal", torch.zeros(num_experts, dtype=torch.int64))
            # lo * E + hi, sorted, lo < hi
            self.add_state("keys", torch.zeros(0, dtype=torch.int64), "custom")
            self.add_state("counts", torch.zeros(0, dtype=torch.int64), "custom")

    def update(self, batch: LayerBatch) -> None:
        ids = batch.ids
        e = self.num_experts
        k = ids.shape[1]
        if ids.numel() == 0:
            return
        if self.dense and e * e <= 128 * k * k:
            # small E: one-hot Gram matrix, block by block (exact: integer GEMM, or float32 on 4096 rows)
            empty = not batch.filled and bool((ids < 0).any())
            gram = torch.zeros(e, e, dtype=torch.int64)
            for rows in row_slices(ids.shape[0]):  # a cache-sized one-hot block at a time
                gram += _gram(ids[rows], e, empty)
            self._pairs += gram
            return
        a_idx, b_idx = torch.triu_indices(k, k, offset=1)
        a, b = ids[:, a_idx].reshape(-1), ids[:, b_idx].reshape(-1)
        diag = ids.reshape(-1)
        if bool((diag < 0).any()):
            ok = (a >= 0) & (b >= 0)
            a, b = a[ok], b[ok]
            diag = diag[diag >= 0]
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        if self.dense:
            upper = torch.bincount(lo * e + hi, minlength=e * e).view(e, e)
            self._pairs += upper + upper.T + torch.diag(torch.bincount(diag, minlength=e))
            return
        self.diagonal += torch.bincount(diag, minlength=e)
        keys, counts = torch.unique(lo * e + hi, return_counts=True)
        self._absorb(keys, counts)

    def _absorb(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        """Add counters (sparse form), then shrink back to ``max_pairs`` counters if needed."""
        if self.keys.numel():
            keys, inverse = torch.unique(torch.cat([self.keys, keys]), return_inverse=True)
            summed = torch.zeros(keys.numel(), dtype=torch.int64)
            counts = summed.scatter_add_(0, inverse, torch.cat([self.counts, counts.to(torch.int64)]))
        counts = counts.to(torch.int64)
        if counts.numel() > self.max_pairs:
            cut = int(torch.topk(counts, self.max_pairs + 1).values[-1])
            counts = counts - cut
            keep = counts > 0
            keys, counts = keys[keep], counts[keep]
            self.max_error += cut
        self.keys, self.counts = keys, counts

    def merge_custom(self, other: Accumulator) -> None:
        """The bounded summary's counters (after ``diagonal`` and ``max_error``): Misra-Gries merge."""
        assert isinstance(other, CoactivationStats)
        self._absorb(other.keys, other.counts)

    @property
    def exact(self) -> bool:
        return self.max_error == 0

    @property
    def pairs(self) -> torch.Tensor:
        """The dense [E, E] counts (in the sparse form this materialises E^2 entries: plots only)."""
        if self.dense:
            return self._pairs
        e = self.num_experts
        out = torch.zeros(e * e, dtype=torch.int64)
        out[self.keys] = self.counts
        out = out.view(e, e)
        return out + out.T + torch.diag(self.diagonal)

    def to_json(self) -> list[list[int]] | dict[str, object]:
        """``--detail``: the E x E matrix up to DENSE_MAX_EXPERTS; above it the sparse form (docs/json.md)."""
        if self.dense:
            return self._pairs.tolist()
        e = self.num_experts
        return {
            "num_experts": e,
            "diagonal": self.diagonal.tolist(),
            "pairs": torch.stack([self.keys // e, self.keys % e, self.counts], dim=1).tolist(),
            "max_error": self.max_error,
        }

    def among(self, experts: torch.Tensor) -> torch.Tensor:
        """Dense pair counts [m, m] among ``experts`` (sorted ids) only: m^2 entries, never E^2."""
        if self.dense:
            return self._pairs[experts][:, experts]
        e, m = self.num_experts, experts.numel()
        pos = torch.full((e,), -1, dtype=torch.int64)
        pos[experts] = torch.arange(m)
        i, j = pos[self.keys // e], pos[self.keys % e]
        keep = (i >= 0) & (j >= 0)
        out = torch.zeros(m, m, dtype=torch.int64)
        out[i[keep], j[keep]] = self.counts[keep]
        return out + out.T + torch.diag(self.diagonal[experts])

    def normalised(self) -> torch.Tensor:
        pairs = self.pairs
        diag = pairs.diagonal().double().clamp_min(1)
        return pairs.double() / diag.unsqueeze(1)
