"""Routing paths: a token's top-1 expert sequence across a window of consecutive MoE layers.

A window is ``(first, last)`` over the trace's per-token MoE layers (inclusive, in the model's own layer
numbering); the default window is all of them. A token that any layer of the window excluded (padding,
non-finite logits, an empty first slot) has no path there.

Paths are counted with :class:`~moediag.stats.sketch.KeyedSketch` (mergeable Misra-Gries, bounded by
``capacity`` paths), never a dict of every path: on a long trace most full-depth paths are unique. Each
tracked path tallies its tokens, hits and loss exactly while tracked; ``max_undercount`` bounds how many
of a path's tokens the sketch may have missed (0 = exact, which holds while distinct paths <= capacity).
"""

from __future__ import annotations

from typing import Any

import torch

from moediag.stats.accuracy import accuracy_row, wilson
from moediag.stats.batch import LayerBatch
from moediag.stats.sketch import KeyedSketch
from moediag.stats.state import Accumulator

DEFAULT_CAPACITY = 1024
DEFAULT_MIN_SUPPORT = 10
DEFAULT_MIN_SHARE = 0.01
DEFAULT_TOP = 20

_VALUES: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "tokens": ((), torch.int64),
    "correct": ((), torch.int64),
    "loss_sum": ((), torch.float64),
    "loss_tokens": ((), torch.int64),
}


class ChunkPaths:
    """Collects each layer's first choice for one chunk, aligned on the chunk's rows (-1 = no choice)."""

    def __init__(self, start: int, n: int) -> None:
        self.start = start
        self.n = n
        self.top1: dict[int, torch.Tensor] = {}
        self.correct: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def add(self, layer: int, batch: LayerBatch) -> None:
        rows = batch.index - self.start
        col = torch.full((self.n,), -1, dtype=torch.int64)
        col[rows] = batch.top1
        self.top1[layer] = col
        if batch.correct is not None:
            if self.correct is None:
                self.correct = torch.zeros(self.n, dtype=torch.bool)
            self.correct[rows] = batch.correct.to(torch.bool)
        if batch.loss is not None:
            if self.loss is None:
                self.loss = torch.full((self.n,), float("nan"), dtype=torch.float64)
            self.loss[rows] = batch.loss.to(torch.float64)

    def matrix(self, layers: list[int]) -> torch.Tensor:
        """[n, len(layers)] first choices; a layer this chunk lacks is all -1."""
        missing = torch.full((self.n,), -1, dtype=torch.int64)
        return torch.stack([self.top1.get(layer, missing) for layer in layers], dim=1)


def windows(present: list[int], picked: tuple[tuple[int, int], ...] = ()) -> list[tuple[int, ...]]:
    """The full-depth window over ``present`` layers, then each picked ``(first, last)`` window."""
    out = [tuple(present)] if present else []
    for first, last in picked:
        w = tuple(x for x in present if first <= x <= last)
        if w and w not in out:
            out.append(w)
    return out


class PathStats(Accumulator):
    """Frequent top-1 paths over one window of layers, with accuracy and loss per path."""

    layers: list[int]
    sketch: KeyedSketch
    tokens: int
    correct: int
    loss_sum: float
    loss_tokens: int
    has_correct: bool
    has_loss: bool

    def __init__(self, layers: list[int], capacity: int = DEFAULT_CAPACITY) -> None:
        self.add_setting("layers", list(layers))
        self.add_child("sketch", KeyedSketch(len(self.layers), capacity, _VALUES))
        self.add_state("tokens", 0)
        self.add_state("correct", 0)
        self.add_state("loss_sum", 0.0)
        self.add_state("loss_tokens", 0)
        self.add_state("has_correct", False, "or")
        self.add_state("has_loss", False, "or")

    def update(self, chunk: ChunkPaths) -> None:
        paths = chunk.matrix(self.layers)
        ok = (paths >= 0).all(dim=1)
        paths = paths[ok]
        n = int(paths.shape[0])
        if n == 0:
            return
        correct = torch.zeros(n, dtype=torch.int64)
        loss = torch.zeros(n, dtype=torch.float64)
        finite = torch.zeros(n, dtype=torch.int64)
        if chunk.correct is not None:
            self.has_correct = True
            correct = chunk.correct[ok].to(torch.int64)
            self.correct += int(correct.sum())
        if chunk.loss is not None:
            self.has_loss = True
            lv = chunk.loss[ok]
            fin = torch.isfinite(lv)
            loss = torch.where(fin, lv, torch.zeros_like(lv))
            finite = fin.to(torch.int64)
            self.loss_sum += float(loss.sum())
            self.loss_tokens += int(finite.sum())
        self.tokens += n
        self.sketch.add(
            paths,
            {
                "tokens": torch.ones(n, dtype=torch.int64),
                "correct": correct,
                "loss_sum": loss,
                "loss_tokens": finite,
            },
        )

    def compute(
        self,
        min_support: int = DEFAULT_MIN_SUPPORT,
        min_share: float = DEFAULT_MIN_SHARE,
        top: int = DEFAULT_TOP,
    ) -> dict[str, Any]:
        """Frequent paths (tokens >= ``min_support``, most frequent first, at most ``top``) and
        underperforming ones (share >= ``min_share``, Wilson interval wholly below the overall accuracy)."""
        overall = self.correct / self.tokens if self.has_correct and self.tokens else None
        sk = self.sketch
        # rank by the exact tally (tokens seen while tracked); ties by key order (deterministic)
        tallied = sk.values["tokens"]
        order = torch.argsort(tallied, descending=True, stable=True)
        rows = []
        for i in order.tolist():
            tokens = int(tallied[i])
            if tokens < min_support:
                break
            row = accuracy_row(
                int(sk.values["correct"][i]) if self.has_correct else None,
                tokens,
                float(sk.values["loss_sum"][i]) if self.has_loss else None,
                int(sk.values["loss_tokens"][i]),
                overall,
            )
            rows.append({"path": sk.keys[i].tolist(), "share": tokens / self.tokens, **row})
        frequent = rows[:top]
        under = [r for r in rows if r["below_overall"] and r["share"] >= min_share]
        under.sort(key=lambda r: (r["accuracy"], -r["tokens"]))
        lo, hi = wilson(self.correct, self.tokens) if self.has_correct else (None, None)
        return {
            "layers": self.layers,
            "tokens": self.tokens,
            "accuracy": overall,
            "accuracy_ci": None if lo is None else [lo, hi],
            "mean_loss": self.loss_sum / self.loss_tokens if self.has_loss and self.loss_tokens else None,
            "distinct_tracked": len(sk),
            "capacity": sk.capacity,
            "exact": sk.exact,
            "max_undercount": sk.decrement,
            "min_support": min_support,
            "frequent": frequent,
            "underperforming": under[:top],
        }
