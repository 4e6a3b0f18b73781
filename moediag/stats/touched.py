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

State per B: the sum of touched counts and of their squares over counted batches and the batch count;
and (through :class:`~moediag.stats.runs.RunAccumulator`) the raw rows of the two blocks of the largest
B at the span's edges, which may continue in a neighbouring chunk; ``merge`` joins them exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.runs import RunAccumulator

__all__ = ["BATCH_SIZES", "ExpertsTouchedStats"]

BATCH_SIZES = (1, 8, 32, 128)


class ExpertsTouchedStats(RunAccumulator):
    """Touched experts of decode batches of each size in ``sizes`` (see the module docstring).

    Each size divides the next, so a batch of the largest size B is made of whole batches of every
    smaller one: the accumulator keeps runs of the largest size open at the span's edges, and a finalised
    run yields the batches of every size inside it (the union over a batch of size 4b is the union of
    its four batches of size b).
    """

    JOIN_PARTS = True

    num_experts: int
    sizes: tuple[int, ...]
    batches: dict[int, int]
    touched: dict[int, int]
    touched_sq: dict[int, int]

    def __init__(self, num_experts: int, sizes: tuple[int, ...] = BATCH_SIZES) -> None:
        super().__init__()
        sizes = tuple(sorted(set(sizes)))
        if not sizes or sizes[0] < 1 or any(b % a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"batch sizes {sizes} must be positive, each dividing the next")
        self.add_setting("num_experts", num_experts)
        self.add_setting("sizes", sizes)
        # per B: counted batches, the sum of their touched counts and of its squares
        self.add_state("batches", dict.fromkeys(sizes, 0))
        self.add_state("touched", dict.fromkeys(sizes, 0))
        self.add_state("touched_sq", dict.fromkeys(sizes, 0))

    def _add(self, b: int, t: torch.Tensor) -> None:
        self.batches[b] += int(t.numel())
        self.touched[b] += int(t.sum())
        self.touched_sq[b] += int((t * t).sum())

    def update(self, batch: LayerBatch) -> None:
        if len(batch) == 0:
            return
        if 1 in self.batches:  # every valid token is a complete batch of one
            if batch.filled:  # no empty slot: every token touches k experts
                n, k = len(batch), int(batch.ids.shape[1])
                self.batches[1] += n
                self.touched[1] += n * k
                self.touched_sq[1] += n * k * k
            else:
                self._add(1, (batch.ids >= 0).sum(dim=1))
        if self.sizes[-1] > 1:
            self.update_rows(batch.index // self.sizes[-1], {"ids": batch.ids, "index": batch.index})

    def _finalize(self, rows: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        ids, index = rows["ids"], rows["index"]
        e = self.num_experts
        sizes = [b for b in self.sizes if b > 1]
        big = sizes[-1]
        first = int(index.min()) // big * big  # blocks aligned on the largest size
        base = sizes[0]
        slot = (index - first) // base
        n_slots = (int(index.max()) - first) // big * (big // base) + big // base
        flat = slot.unsqueeze(1) * e + ids
        empty = ids < 0
        if bool(empty.any()):  # empty slots touch nothing: send them to a spare element past the end
            flat = flat.masked_fill(empty, n_slots * e)
        hit = torch.zeros(n_slots * e + 1, dtype=torch.bool)
        hit.index_fill_(0, flat.view(-1), True)
        hit_b = hit[:-1].view(n_slots, e)
        count_b = torch.bincount(slot, minlength=n_slots)
        prev = base
        for b in sizes:
            if b != prev:
                f = b // prev
                hit_b = hit_b.view(-1, f, e).any(dim=1)
                count_b = count_b.view(-1, f).sum(dim=1)
                prev = b
            full = count_b == b
            if bool(full.any()):
                self._add(b, hit_b[full].count_nonzero(dim=1))

    def compute(self, top_k: int | None) -> dict[str, dict[str, Any]]:
        """Keyed by B (as a string): ``batches``, ``share``, ``share_sd``, ``experts``, ``uniform``."""
        done = self.finalized()
        assert isinstance(done, ExpertsTouchedStats)
        e = self.num_experts
        out: dict[str, dict[str, Any]] = {}
        for b in self.sizes:
            n = done.batches[b]
            mean = done.touched[b] / (n * e) if n else None
            sd = None
            if n > 1:
                m = done.touched[b] / n
                sd = math.sqrt(max(0.0, (done.touched_sq[b] - n * m * m) / (n - 1))) / e
            out[str(b)] = {
                "batches": n,
                "share": mean,
                "share_sd": sd,
                "experts": None if mean is None else mean * e,
                "uniform": 1.0 - (1.0 - top_k / e) ** b if top_k else None,
            }
        return out
