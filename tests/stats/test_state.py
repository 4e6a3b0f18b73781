"""Declared state and the generic merge: a field that is not declared cannot be silently left out."""

from __future__ import annotations

import pytest
import torch

from moediag.replay import LayerReplay
from moediag.stats import LayerStats
from moediag.stats.router import RouterStats
from moediag.stats.state import Accumulator


class _Counts(Accumulator):
    def __init__(self) -> None:
        self.add_setting("size", 3)
        self.add_state("n", 0)
        self.add_state("peak", 0.0, "max")
        self.add_state("seen", torch.zeros(3))


def test_generic_merge_follows_the_declarations() -> None:
    a, b = _Counts(), _Counts()
    a.n, a.peak, a.seen = 2, 5.0, torch.tensor([1.0, 0, 0])
    b.n, b.peak, b.seen = 3, 1.0, torch.tensor([0, 2.0, 0])
    a.merge(b)
    assert (a.n, a.peak, a.seen.tolist(), a.size) == (5, 5.0, [1.0, 2.0, 0.0], 3)


def test_an_undeclared_field_stops_the_merge() -> None:
    a, b = _Counts(), _Counts()
    a.extra = 1  # type: ignore[attr-defined]  # a new field someone forgot to declare
    with pytest.raises(TypeError, match="extra not declared"):
        a.merge(b)


def test_the_real_accumulators_declare_everything() -> None:
    layer = LayerStats(0, 8, 2)
    assert layer.undeclared() == [] and layer.load.undeclared() == [] and RouterStats(8, 2).undeclared() == []
    other = LayerStats(0, 8, 2)
    other.excluded_nonfinite, other.has_logits = 3, True
    layer.merge(other)
    assert layer.excluded_nonfinite == 3 and layer.has_logits


def test_layer_replay_merges_every_field() -> None:
    a, b = LayerReplay(0, 4, 2, 2), LayerReplay(0, 4, 2, 2)
    b.tokens, b.logits_max_abs_diff, b.whatif_changed = 7, 0.5, 2
    b.load_after += 1
    a.logits_max_abs_diff = 0.25
    a.merge(b)
    assert (a.tokens, a.logits_max_abs_diff, a.whatif_changed, a.layer) == (7, 0.5, 2, 0)
    assert a.load_after.tolist() == [1, 1, 1, 1]
