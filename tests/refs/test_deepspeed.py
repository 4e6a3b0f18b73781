"""moediag against DeepSpeed's own gating (``deepspeed.moe.sharded_moe``, CPU, built with DS_BUILD_OPS=0):
capacity with min_capacity, drops per policy (total and by position) and l_aux. Skipped without deepspeed
(``pip install moediag[refs]``)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from tests.refs.conftest import bucket_counts, layer_row

os.environ.setdefault("DS_BUILD_OPS", "0")
logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
sharded_moe = pytest.importorskip(
    "deepspeed.moe.sharded_moe", reason="deepspeed is not installed (extra: refs)"
)


def _skewed(seed: int, n: int, e: int, spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, e, generator=g) * 2 + torch.linspace(0, spread, e)


def _kept_per_token(dispatch_mask: torch.Tensor) -> torch.Tensor:
    return dispatch_mask.reshape(dispatch_mask.shape[0], -1).sum(dim=1)


@pytest.mark.parametrize("min_capacity", [0, 4])
def test_top1_capacity_min_capacity_and_l_aux(make_trace, min_capacity: int) -> None:
    """The issue's case: 64 tokens, 32 experts, CF 1: C = 2, or 4 with DeepSpeed's min_capacity."""
    n, e = 64, 32
    logits = _skewed(1, n, e)
    l_aux, _, dispatch, _ = sharded_moe.top1gating(logits.clone(), 1.0, min_capacity, use_rts=False)
    dropped = n - int(dispatch.sum())
    assert dropped > 0
    row = layer_row(make_trace, logits, 1, "softmax", capacity_factor=1.0, min_capacity=min_capacity)
    assert row["drop_rate_total"]["1.0"] == pytest.approx(dropped / n)
    assert row["aux_loss"] == pytest.approx(float(l_aux), rel=1e-5)


def test_min_capacity_changes_the_rate_as_deepspeed_does(make_trace) -> None:
    n, e = 64, 32
    logits = _skewed(1, n, e)
    plain = layer_row(make_trace, logits, 1, "softmax", capacity_factor=1.0)["drop_rate_total"]["1.0"]
    floor = layer_row(make_trace, logits, 1, "softmax", capacity_factor=1.0, min_capacity=4)
    assert floor["drop_rate_total"]["1.0"] < plain


def test_top1_random_token_selection_drops_the_same_number(make_trace) -> None:
    n, e = 256, 8
    logits = _skewed(2, n, e)
    row = layer_row(make_trace, logits, 1, "softmax", capacity_factor=1.0)
    for seed in range(3):
        torch.manual_seed(seed)
        _, _, dispatch, _ = sharded_moe.top1gating(logits.clone(), 1.0, 0, use_rts=True)
        assert row["drop_rate_total"]["1.0"] == pytest.approx((n - int(dispatch.sum())) / n)


@pytest.mark.parametrize("cf", [0.5, 1.0])
def test_top2_first_choices_first_and_l_aux_of_first_choices(make_trace, cf: float) -> None:
    """top2gating queues every first choice before any second choice: moediag's first-choices-first, by
    position bucket. Its l_aux counts first choices only: moediag's aux_loss at top-k 1."""
    n, e = 300, 8
    logits = _skewed(3, n, e)
    l_aux, _, dispatch, _ = sharded_moe.top2gating(logits.clone(), cf, 0, top2_2nd_expert_sampling=False)
    kept = _kept_per_token(dispatch)
    row = layer_row(make_trace, logits, 2, "softmax", capacity_factor=cf, norm_topk_prob="true")
    assert row["drop_rate_total"][str(cf)] == pytest.approx(int((2 - kept).sum()) / (2 * n))
    by = row["drop_rate_by_position"]
    rates = by["rate"]["first-choices-first"][str(cf)]
    got = [round(r * a) if r is not None else 0 for r, a in zip(rates, by["assignments"], strict=True)]
    positions = torch.repeat_interleave(torch.arange(n), (2 - kept).long())
    assert got == bucket_counts(positions)
    assert sum(got) > 0
    top1 = layer_row(make_trace, logits, 1, "softmax")
    assert top1["aux_loss"] == pytest.approx(float(l_aux), rel=1e-5)
    assert row["aux_loss"] != pytest.approx(float(l_aux), rel=1e-3)


@pytest.mark.parametrize(("policy", "ours"), [("position", "token-order"), ("probs", "highest-weight")])
@pytest.mark.parametrize(("k", "cf", "min_capacity"), [(2, 1.0, 0), (4, 0.75, 0), (3, 0.5, 40)])
def test_topk_gating_policies(
    make_trace, policy: str, ours: str, k: int, cf: float, min_capacity: int
) -> None:
    n, e = 320, 8
    logits = _skewed(k, n, e)
    l_aux, _, dispatch, _ = sharded_moe.topkgating(logits.clone(), k, cf, min_capacity, drop_policy=policy)
    kept = _kept_per_token(dispatch)
    assert int((k - kept).sum()) > 0
    row = layer_row(
        make_trace,
        logits,
        k,
        "softmax",
        capacity_factor=cf,
        min_capacity=min_capacity,
        norm_topk_prob="false",
    )
    assert row["drop_rate_total"][str(cf)] == pytest.approx(int((k - kept).sum()) / (k * n))
    by = row["drop_rate_by_position"]
    rates = by["rate"][ours][str(cf)]
    got = [round(r * a) if r is not None else 0 for r, a in zip(rates, by["assignments"], strict=True)]
    assert got == bucket_counts(torch.repeat_interleave(torch.arange(n), (k - kept).long()))
    assert row["aux_loss"] == pytest.approx(float(l_aux), rel=1e-5)
