"""Accuracy and loss per expert, with Wilson 95% intervals (shared/design/metrics.md, "Per-path accuracy").

Needs ``tokens.correct`` (hits) and/or ``tokens.loss`` in the trace. Two attributions, both reported:

- **top-1**: a token counts for its first-choice expert only (``expert_accuracy``);
- **any-of-top-k**: a token counts for every expert in its top-k set (``expert_accuracy_topk``); an
  expert's figure then mixes tokens that other experts also served.

State is hits and totals (and float64 loss sums), never ratios. An expert is flagged ``below_overall`` when
its whole Wilson interval lies below the layer's overall accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.state import Accumulator

#: the two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval for ``correct`` hits out of ``n`` (None, None when n = 0).

    >>> tuple(round(x, 4) for x in wilson(8, 10))
    (0.4902, 0.9433)
    """
    if n <= 0:
        return None, None
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(
    c1: int, n1: int, c2: int, n2: int, z: float = Z95
) -> tuple[float | None, float | None, float | None]:
    """The difference p2 - p1 and its 95% interval by Newcombe's hybrid score method (1998, method 10),
    built from the two Wilson intervals. (None, None, None) when either n is 0."""
    if n1 <= 0 or n2 <= 0:
        return None, None, None
    p1, p2 = c1 / n1, c2 / n2
    l1, u1 = wilson(c1, n1, z)
    l2, u2 = wilson(c2, n2, z)
    assert l1 is not None and u1 is not None and l2 is not None and u2 is not None
    d = p2 - p1
    return d, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def accuracy_row(
    correct: int | None, tokens: int, loss_sum: float | None, loss_tokens: int, overall: float | None
) -> dict[str, Any]:
    """One ``{tokens, correct, accuracy, ci_low, ci_high, below_overall, mean_loss}`` entry."""
    acc = lo = hi = None
    if correct is not None and tokens:
        acc = correct / tokens
        lo, hi = wilson(correct, tokens)
    return {
        "tokens": tokens,
        "correct": correct,
        "accuracy": acc,
        "ci_low": lo,
        "ci_high": hi,
        "below_overall": bool(hi is not None and overall is not None and hi < overall),
        "mean_loss": (loss_sum / loss_tokens) if loss_sum is not None and loss_tokens else None,
    }


class _Tally(Accumulator):
    """Per-expert tokens, hits, finite-loss sums and counts under one attribution."""

    tokens: torch.Tensor
    correct: torch.Tensor
    loss_sum: torch.Tensor
    loss_tokens: torch.Tensor

    def __init__(self, num_experts: int) -> None:
        self.add_state("tokens", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("correct", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("loss_sum", torch.zeros(num_experts, dtype=torch.float64))
        self.add_state("loss_tokens", torch.zeros(num_experts, dtype=torch.int64))

    def add(self, experts: torch.Tensor, correct: torch.Tensor | None, loss: torch.Tensor | None) -> None:
        e = self.tokens.numel()
        ok = experts >= 0
        ex = experts[ok]
        self.tokens += torch.bincount(ex, minlength=e)
        if correct is not None:
            self.correct += (
                torch.bincount(ex, weights=correct[ok].double(), minlength=e).round().to(torch.int64)
            )
        if loss is not None:
            lv = loss[ok]
            fin = torch.isfinite(lv)
            self.loss_sum += torch.bincount(ex[fin], weights=lv[fin], minlength=e)
            self.loss_tokens += torch.bincount(ex[fin], minlength=e)


class ExpertAccuracyStats(Accumulator):
    """Per-expert accuracy and loss of one layer, top-1 and any-of-top-k attribution."""

    num_experts: int
    top1: _Tally
    topk: _Tally
    tokens: int
    correct: int
    loss_sum: float
    loss_tokens: int
    has_correct: bool
    has_loss: bool

    def __init__(self, num_experts: int) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_child("top1", _Tally(num_experts))
        self.add_child("topk", _Tally(num_experts))
        self.add_state("tokens", 0)
        self.add_state("correct", 0)
        self.add_state("loss_sum", 0.0)
        self.add_state("loss_tokens", 0)
        self.add_state("has_correct", False, "or")
        self.add_state("has_loss", False, "or")

    def update(self, batch: LayerBatch) -> None:
        correct, loss = batch.correct, batch.loss
        if correct is None and loss is None:
            return
        c = None if correct is None else correct.to(torch.bool)
        lv = None if loss is None else loss.to(torch.float64)
        self.has_correct |= c is not None
        self.has_loss |= lv is not None
        n = len(batch)
        self.tokens += n
        if c is not None:
            self.correct += int(c.sum())
        if lv is not None:
            fin = torch.isfinite(lv)
            self.loss_sum += float(lv[fin].sum())
            self.loss_tokens += int(fin.sum())
        self.top1.add(batch.top1, c, lv)
        k = batch.ids.shape[1]
        self.topk.add(
            batch.ids.reshape(-1),
            None if c is None else c.repeat_interleave(k),
            None if lv is None else lv.repeat_interleave(k),
        )

    @property
    def overall(self) -> float | None:
        return self.correct / self.tokens if self.has_correct and self.tokens else None

    def _rows(self, tally: _Tally) -> list[dict[str, Any]]:
        overall = self.overall
        rows = []
        for i in range(self.num_experts):
            row = accuracy_row(
                int(tally.correct[i]) if self.has_correct else None,
                int(tally.tokens[i]),
                float(tally.loss_sum[i]) if self.has_loss else None,
                int(tally.loss_tokens[i]),
                overall,
            )
            rows.append({"expert": i, **row})
        return rows

    def compute(self) -> dict[str, Any]:
        """``accuracy``, ``accuracy_ci``, ``mean_loss``, ``expert_accuracy`` (top-1) and
        ``expert_accuracy_topk`` (any-of-top-k); all None when the trace has neither correct nor loss."""
        if not (self.has_correct or self.has_loss):
            return {
                "accuracy": None,
                "accuracy_ci": None,
                "mean_loss": None,
                "expert_accuracy": None,
                "expert_accuracy_topk": None,
            }
        lo, hi = wilson(self.correct, self.tokens) if self.has_correct else (None, None)
        return {
            "accuracy": self.overall,
            "accuracy_ci": None if lo is None else [lo, hi],
            "mean_loss": self.loss_sum / self.loss_tokens if self.has_loss and self.loss_tokens else None,
            "expert_accuracy": self._rows(self.top1),
            "expert_accuracy_topk": self._rows(self.topk),
        }
