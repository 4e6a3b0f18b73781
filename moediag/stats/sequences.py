"""Per-sequence statistics: the sequence-level aux loss and the consecutive-token same-expert rate."""

from __future__ import annotations

from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.blocked import per_row
from moediag.stats.load import group_counts
from moediag.stats.runs import RunAccumulator
from moediag.stats.state import Accumulator


class SeqAuxStats(RunAccumulator):
    """DeepSeek-V2/V3 sequence-wise aux loss: E * sum_i (c_i,s / (k n_s)) * P_i,s per sequence, then the mean
    over sequences (balanced = 1). Needs ``tokens.sequence_ids`` and logits."""

    JOIN_PARTS = False  # its per-call cost is small and its rows hold [n, E] probabilities: do not copy them

    num_experts: int
    top_k: int
    loss_sum: float
    sequences: int

    def __init__(self, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        self.add_state("loss_sum", 0.0)
        self.add_state("sequences", 0)

    def update(self, batch: LayerBatch) -> None:
        if batch.sequence_ids is None or batch.probs is None or len(batch) == 0:
            return
        self.update_rows(batch.sequence_ids.to(torch.int64), {"ids": batch.ids, "probs": batch.probs})

    def _finalize(self, rows: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        ids, probs = rows["ids"], rows["probs"]
        e, k = self.num_experts, ids.shape[1]
        r = lengths.numel()
        run = torch.repeat_interleave(torch.arange(r), lengths)
        counts = group_counts(run, ids, r, e)
        # sum_i c_{s,i} P_{s,i} = sum_t <c_s, p_t> / n_s: one dot per token (a per-row float32 reduction, the
        # same whatever the chunking), summed per sequence in float64; no [n, E] float64 copy
        table = counts.float()
        dots = per_row(lambda p, r: (p * table.index_select(0, r)).sum(dim=1), probs, run).double()
        per_run = torch.zeros(r, dtype=torch.float64).index_add_(0, run, dots)
        n = lengths.double()
        self.loss_sum += float((e * per_run / (k * n * n)).sum())
        self.sequences += r

    def compute(self) -> dict[str, Any]:
        done = self.finalized()
        assert isinstance(done, SeqAuxStats)
        return {
            "seq_aux_loss": done.loss_sum / done.sequences if done.sequences else None,
            "sequences": done.sequences or None,
        }


class ConsecutiveStats(Accumulator):
    """Share of tokens t+1 whose first choice equals token t's, within a sequence (Mixtral sec. 5).

    State: pair and match counts, plus the first and last token of the span for exact merges (``custom``:
    the pair across the boundary of two spans is counted in :meth:`merge_custom`).
    The baseline is what independent choices with the observed first-choice shares would give
    (sum of squared shares); 1/E is the uniform baseline.
    """

    num_experts: int
    pairs: int
    same: int
    top1: torch.Tensor
    first: tuple[int, int] | None
    last: tuple[int, int] | None

    def __init__(self, num_experts: int) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_state("pairs", 0)
        self.add_state("same", 0)
        self.add_state("top1", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("first", None, "custom")  # (group id, top1)
        self.add_state("last", None, "custom")

    def update(self, batch: LayerBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        gids = batch.sequence_ids if batch.sequence_ids is not None else torch.zeros(n, dtype=torch.int64)
        gids = gids.to(torch.int64)
        top1 = batch.top1
        other = ConsecutiveStats(self.num_experts)
        same_group = gids[1:] == gids[:-1]
        ok = same_group & (top1[1:] >= 0) & (top1[:-1] >= 0)
        other.pairs = int(ok.sum())
        other.same = int((ok & (top1[1:] == top1[:-1])).sum())
        other.first = (int(gids[0]), int(top1[0]))
        other.last = (int(gids[-1]), int(top1[-1]))
        valid = top1[top1 >= 0]
        other.top1 = torch.bincount(valid, minlength=self.num_experts).to(torch.int64)
        self.merge(other)

    def merge_custom(self, other: Accumulator) -> None:
        """The pair across the boundary (this span's last token, ``other``'s first), then the new ends."""
        assert isinstance(other, ConsecutiveStats)
        if other.first is None:
            return
        if (
            self.last is not None
            and self.last[0] == other.first[0]
            and self.last[1] >= 0
            and other.first[1] >= 0
        ):
            self.pairs += 1
            self.same += int(self.last[1] == other.first[1])
        if self.first is None:
            self.first = other.first
        self.last = other.last

    def compute(self) -> dict[str, Any]:
        total = int(self.top1.sum())
        baseline = float(((self.top1.double() / total) ** 2).sum()) if total else None
        return {
            "consecutive_same_rate": self.same / self.pairs if self.pairs else None,
            "consecutive_same_baseline": baseline,
            "consecutive_pairs": self.pairs,
        }
