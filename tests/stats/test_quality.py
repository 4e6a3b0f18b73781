"""Paired quality of two models per domain: streaming == one-shot == merge, and the intervals by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.quality import PairedQualityStats, mean_interval


def _update(acc: PairedQualityStats, sl: slice, d: dict[str, torch.Tensor]) -> None:
    acc.update(
        domain=d["domain"][sl],
        loss_a=d["la"][sl],
        loss_b=d["lb"][sl],
        correct_a=d["ca"][sl],
        correct_b=d["cb"][sl],
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 200), st.lists(st.integers(1, 199), max_size=4))
def test_streaming_equals_one_shot_equals_merge(seed: int, n: int, cuts: list[int]) -> None:
    g = torch.Generator().manual_seed(seed)
    d = {
        "domain": torch.randint(0, 3, (n,), generator=g),
        "la": torch.rand(n, generator=g, dtype=torch.float64) * 4,
        "lb": torch.rand(n, generator=g, dtype=torch.float64) * 4,
        "ca": torch.rand(n, generator=g) < 0.5,
        "cb": torch.rand(n, generator=g) < 0.6,
    }
    one = PairedQualityStats()
    _update(one, slice(0, n), d)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    merged = PairedQualityStats()
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = PairedQualityStats()
        _update(part, slice(lo, hi), d)
        merged.merge(part)
    want, got = one.compute(), merged.compute()
    assert got["overall"]["tokens"] == want["overall"]["tokens"] == n
    for a, b in zip([want["overall"], *want["domains"]], [got["overall"], *got["domains"]], strict=True):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
            else:
                assert b[key] == value or b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_paired_accuracy_interval_by_hand() -> None:
    ca = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    cb = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    acc = PairedQualityStats()
    acc.update(domain=None, correct_a=ca, correct_b=cb)
    row = acc.compute()["overall"]
    diff = cb.double().numpy() - ca.double().numpy()
    half = 1.959963984540054 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert row["accuracy_delta"] == pytest.approx(diff.mean())
    assert row["accuracy_delta_ci"] == pytest.approx([diff.mean() - half, diff.mean() + half])
    assert row["loss_a"] is None and acc.compute()["domains"] == []


def test_mean_interval() -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0])
    m, lo, hi = mean_interval(float(x.sum()), float((x * x).sum()), len(x))
    half = 1.959963984540054 * x.std(ddof=1) / 2
    assert (m, lo, hi) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half))
    assert mean_interval(3.0, 9.0, 1) == (3.0, None, None)
    assert mean_interval(0.0, 0.0, 0) == (None, None, None)
