"""Experts a decode batch touches: the share of a layer's experts whose weights a serving step must read.

A **decode batch of B tokens** is a block of B consecutive token slots of the trace: slots
``[0, B), [B, 2B), ...`` by global token index. A block counts when all B of its tokens are valid (a
block holding padding, masked or non-finite tokens, or cut short by the trace's end, is left out), so
every counted batch has exactly B tokens. Its *touched share* is the number of distinct experts its
tokens chose, over E. The figure is the mean touched share over counted batches, for B in
:data:`BATCH_SIZES`, beside the uniform-routing value ``1 - (1 - k/E)^B`` (tokens routed independently
and uniformly). Consecutive tokens of one sequence route alike more often than tokens of different
requests do, so for a server batching B independent requests this is a lower bound when routing is
sticky (compare ``consecutive_same_rate``).

State per B: the sum of touched counts and of their squares over counted batches, the batch count, and
(through :class:`~moediag.stats.runs.RunAccumulator`) the two blocks at the span's edges that may
continue in a neighbouring chunk; ``merge`` joins them exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.runs import RunAccumulator

__all__ = ["BATCH_SIZES", "BatchTouchedStats", "ExpertsTouchedStats", "touched_counts"]

BATCH_SIZES = (1, 8, 32, 128)


def touched_counts(ids: torch.Tensor, lengths: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Distinct experts (ids >= 0) chosen in each run of consecutive rows of ``ids`` [n, k]."""
    r = lengths.numel()
    run = torch.repeat_interleave(torch.arange(r), lengths)
    ok = ids >= 0
    flat = (run.unsqueeze(1) * num_experts + ids.clamp_min(0))[ok]
    hit = torch.zeros(r * num_experts, dtype=torch.bool)
    hit[flat] = True
    return hit.view(r, num_experts).sum(dim=1)


class BatchTouchedStats(RunAccumulator):
    """Touched experts of decode batches of ``batch`` tokens (one B; see the module docstring)."""

    def __init__(self, num_experts: int, batch: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.batch = batch
        self.batches = 0
        self.touched = 0
        self.touched_sq = 0

    def update(self, batch: LayerBatch) -> None:
        if len(batch) == 0:
            return
        if self.batch == 1:  # every valid token is a complete batch: no runs to keep
            t = (batch.ids >= 0).sum(dim=1)
            self.batches += int(t.numel())
            self.touched += int(t.sum())
            self.touched_sq += int((t * t).sum())
            return
        self.update_rows(batch.index // self.batch, {"ids": batch.ids})

    def _finalize(self, rows: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        full = lengths == self.batch
        if not bool(full.any()):
            return
        t = touched_counts(rows["ids"], lengths, self.num_experts)[full]
        self.batches += int(t.numel())
        self.touched += int(t.sum())
        self.touched_sq += int((t * t).sum())

    def _merge_sums(self, other: RunAccumulator) -> None:
        assert isinstance(other, BatchTouchedStats)
        self.batches += other.batches
        self.touched += other.touched
        self.touched_sq += other.touched_sq

    def compute(self, top_k: int | None) -> dict[str, Any]:
        done = self.finalized()
        assert isinstance(done, BatchTouchedStats)
        e, n = self.num_experts, done.batches
        mean = done.touched / (n * e) if n else None
        sd = None
        if n > 1:
            m = done.touched / n
            sd = math.sqrt(max(0.0, (done.touched_sq - n * m * m) / (n - 1))) / e
        uniform = 1.0 - (1.0 - top_k / e) ** self.batch if top_k else None
        return {
            "batches": n,
            "share": mean,
            "share_sd": sd,
            "experts": None if mean is None else mean * e,
            "uniform": uniform,
        }


class ExpertsTouchedStats:
    """:class:`BatchTouchedStats` for every B in ``sizes``; ``compute`` is keyed by B (as a string)."""

    def __init__(self, num_experts: int, sizes: tuple[int, ...] = BATCH_SIZES) -> None:
        self.num_experts = num_experts
        self.by_size = {b: BatchTouchedStats(num_experts, b) for b in sizes}

    def update(self, batch: LayerBatch) -> None:
        for acc in self.by_size.values():
            acc.update(batch)

    def merge(self, other: ExpertsTouchedStats) -> None:
        for b, acc in self.by_size.items():
            acc.merge(other.by_size[b])

    def compute(self, top_k: int | None) -> dict[str, dict[str, Any]]:
        return {str(b): acc.compute(top_k) for b, acc in self.by_size.items()}
