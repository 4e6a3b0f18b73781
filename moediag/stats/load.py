"""Expert load: counts per expert (all top-k choices), first-choice counts, per-step counts."""

from __future__ import annotations

from typing import Any

import torch

from moediag import options
from moediag.stats.batch import LayerBatch
from moediag.stats.imbalance import imbalance_figures
from moediag.stats.state import Accumulator


def bincount(ids: torch.Tensor, num_experts: int, filled: bool = False) -> torch.Tensor:
    """Counts of each expert id in ``ids`` (any shape; -1 entries ignored unless ``filled`` says there are
    none), int64 [E]."""
    flat = ids.reshape(-1)
    if not filled and flat.numel() and int(flat.min()) < 0:
        flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=num_experts).to(torch.int64)


def group_counts(
    group: torch.Tensor, ids: torch.Tensor, groups: int, num_experts: int, filled: bool = False
) -> torch.Tensor:
    """Counts per (group, expert), int64 [groups, E]: token t of ``ids`` [n, k] is in group ``group[t]``.

    Empty slots (-1) are counted in a spare column that is dropped, so no boolean mask is needed;
    ``filled`` (the caller knows there is none) skips that column and its pass over ``ids``.
    """
    if filled:
        key = ((group * num_experts).unsqueeze(1) + ids).reshape(-1)
        return torch.bincount(key, minlength=groups * num_experts).view(groups, num_experts)
    e1 = num_experts + 1
    slot = torch.where(ids < 0, num_experts, ids)
    key = (group.unsqueeze(1) * e1 + slot).reshape(-1)
    return torch.bincount(key, minlength=groups * e1).view(groups, e1)[:, :num_experts]


class LoadStats(Accumulator):
    """Sufficient statistics: assignment counts, first-choice counts, token and empty-slot counts."""

    num_experts: int
    cold_eps: float
    counts: torch.Tensor
    top1_counts: torch.Tensor
    tokens: int
    empty_slots: int

    def __init__(self, num_experts: int, cold_eps: float = options.default("cold_eps")) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_setting("cold_eps", cold_eps)
        self.add_state("counts", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("top1_counts", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("tokens", 0)
        self.add_state("empty_slots", 0)

    def update(self, batch: LayerBatch) -> None:
        self.counts += bincount(batch.ids, self.num_experts, batch.filled)
        self.top1_counts += bincount(batch.top1, self.num_experts, batch.filled)
        self.tokens += len(batch)
        if not batch.filled:
            self.empty_slots += int((batch.ids < 0).sum())

    def add_counts(self, counts: torch.Tensor) -> None:
        """Count-only data (``expert_counts``): assignments without tokens."""
        self.counts += counts.to(torch.int64)

    def compute(self) -> dict[str, Any]:
        out = imbalance_figures(self.counts, self.cold_eps)
        out["assignments"] = int(self.counts.sum())
        out["empty_slots"] = self.empty_slots
        return out


class StepLoadStats(Accumulator):
    """Load per training step (``tokens.step``) or per recorded step of count-only data."""

    num_experts: int
    by_step: dict[int, torch.Tensor]

    def __init__(self, num_experts: int) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_state("by_step", {})  # step -> counts [E]; summed per step

    def _add(self, step: int, counts: torch.Tensor) -> None:
        if step in self.by_step:
            self.by_step[step] = self.by_step[step] + counts
        else:
            self.by_step[step] = counts.clone()

    def update(self, batch: LayerBatch) -> None:
        if batch.step is None or len(batch) == 0:
            return
        steps, inverse = torch.unique(batch.step, return_inverse=True)
        counts = group_counts(inverse, batch.ids, steps.numel(), self.num_experts, batch.filled)
        for i, s in enumerate(steps.tolist()):
            self._add(int(s), counts[i])

    def add_rows(self, counts: torch.Tensor, first_step: int = 0) -> None:
        for i in range(counts.shape[0]):
            self._add(first_step + i, counts[i].to(torch.int64))

    def compute(self) -> dict[str, Any] | None:
        if not self.by_step:
            return None
        from moediag.stats.imbalance import cv, max_vio

        steps = sorted(self.by_step)
        return {
            "steps": steps,
            "load": [self.by_step[s].tolist() for s in steps],
            "max_vio": [max_vio(self.by_step[s]) for s in steps],
            "cv": [cv(self.by_step[s]) for s in steps],
        }
