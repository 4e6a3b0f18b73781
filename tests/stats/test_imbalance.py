"""Imbalance figures against the definitions (reference in tests/_reference.py) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moediag.stats import imbalance as im
from tests import _reference as ref


def figures(counts: list[int], cold_eps: float = 0.1) -> dict[str, object]:
    return im.imbalance_figures(torch.tensor(counts, dtype=torch.int64), cold_eps)


@pytest.mark.parametrize("e", [2, 4, 8, 64])
def test_perfectly_balanced(e: int) -> None:
    f = figures([5] * e)
    assert f["max_vio"] == pytest.approx(0.0, abs=1e-12)
    assert f["cv"] == pytest.approx(0.0, abs=1e-12)
    assert f["entropy_norm"] == pytest.approx(1.0, rel=1e-12)
    assert f["effective_experts"] == pytest.approx(e, rel=1e-12)
    assert f["gini"] == pytest.approx(0.0, abs=1e-12)
    assert f["max_mean"] == pytest.approx(1.0) and f["min_mean"] == pytest.approx(1.0)
    assert f["dead_experts"] == [] and f["cold_experts"] == []
    assert f["load_share"] == pytest.approx([1 / e] * e)


@pytest.mark.parametrize("e", [2, 4, 8, 64])
def test_one_expert_takes_all(e: int) -> None:
    counts = [0] * e
    counts[e // 2] = 12
    f = figures(counts)
    assert f["gini"] == pytest.approx((e - 1) / e, rel=1e-12)
    assert f["max_vio"] == pytest.approx(e - 1.0)
    assert f["max_mean"] == pytest.approx(float(e))
    assert f["min_mean"] == 0.0
    assert f["entropy_norm"] == pytest.approx(0.0, abs=1e-12)
    assert f["effective_experts"] == pytest.approx(1.0)
    assert f["cv"] == pytest.approx(math.sqrt(e - 1))  # population std: sqrt(E-1) * mean
    assert f["dead_experts"] == [i for i in range(e) if i != e // 2]
    assert f["cold_experts"] == f["dead_experts"]


def test_hand_computed_small_case() -> None:
    # c = [6, 2, 0, 0], E = 4, k = 2, T = 4 -> mean 2
    f = figures([6, 2, 0, 0])
    assert f["max_vio"] == pytest.approx(6 / 2 - 1)
    assert f["cv"] == pytest.approx(math.sqrt(((4**2) + 0 + 4 + 4) / 4) / 2)
    # Gini via mean absolute difference: sum|ci-cj| = 2*(4+6+6+2+2+0) = 40; /16 = 2.5; /(2*2) = 0.625
    assert f["gini"] == pytest.approx(0.625)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert f["entropy_norm"] == pytest.approx(h / math.log(4))
    assert f["effective_experts"] == pytest.approx(math.exp(h))
    assert f["dead_experts"] == [2, 3]


@pytest.mark.parametrize("seed", range(12))
def test_random_counts_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = int(rng.integers(2, 40))
    k = int(rng.integers(1, min(e, 6) + 1))
    t = int(rng.integers(1, 300))
    # k*T assignments spread unevenly (some experts may be dead)
    weights = rng.dirichlet(np.full(e, 0.3))
    counts = rng.multinomial(k * t, weights).tolist()
    eps = float(rng.choice([0.05, 0.1, 0.5]))
    got = figures(counts, eps)
    want = ref.imbalance(counts, k, t, eps)
    for key in ("max_vio", "max_mean", "min_mean", "cv", "entropy_norm", "effective_experts", "gini"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert got["load_share"] == pytest.approx(want["load_share"], rel=1e-12)
    assert got["load"] == counts
    assert got["dead_experts"] == want["dead_experts"]
    assert got["cold_experts"] == want["cold_experts"]


def test_cold_threshold_is_strict_and_scaled_by_e() -> None:
    # E=4, eps=0.4 -> cold when share < 0.1; shares 0.1 exactly is not cold, 0.09 is
    counts = [10, 45, 45, 0]
    assert figures(counts, 0.4)["cold_experts"] == [3]
    assert figures([9, 46, 45, 0], 0.4)["cold_experts"] == [0, 3]


def test_empty_load_is_absent_not_zero() -> None:
    f = figures([0, 0, 0])
    for key in (
        "load_share",
        "max_vio",
        "max_mean",
        "min_mean",
        "cv",
        "gini",
        "entropy_norm",
        "effective_experts",
    ):
        assert f[key] is None, key
    # a dense layer recorded as all-zero rows (or a fully masked one) has no dead experts (metrics.md)
    assert f["dead_experts"] == [] and f["cold_experts"] == []


def test_single_expert_entropy_undefined() -> None:
    assert im.entropy_norm(torch.tensor([7])) is None
    assert im.gini(torch.tensor([7])) == pytest.approx(0.0)


def test_balancedness() -> None:
    assert im.balancedness(torch.tensor([4, 4, 4])) == pytest.approx(1.0)
    assert im.balancedness(torch.tensor([1, 2, 3, 6])) == pytest.approx(3 / 6)
    assert im.balancedness(torch.tensor([0, 0])) is None
