"""moediag against Megatron-Core's own router code (CPU): group-limited top-k, routing with a selection
bias, the logged load-balancing loss (unbiased top-k) and token dropping. Skipped without megatron-core
(``pip install moediag[refs]``)."""

from __future__ import annotations

import warnings

import pytest
import torch

from moediag import routing
from moediag.trace import RoutingSpec
from tests.refs.conftest import bucket_counts, layer_row

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    moe_utils = pytest.importorskip(
        "megatron.core.transformer.moe.moe_utils", reason="megatron-core is not installed (extra: refs)"
    )


def _mask(ids: torch.Tensor, e: int) -> torch.Tensor:
    return torch.zeros(ids.shape[0], e, dtype=torch.bool).scatter_(1, ids, True)


# (experts, groups, groups kept, top-k): DeepSeek-V3's shape (k / kept = 2) and others where the rules differ
SHAPES = [(16, 4, 2, 4), (16, 4, 2, 6), (16, 4, 1, 3), (32, 8, 4, 8), (24, 4, 2, 2)]


@pytest.mark.parametrize(("e", "groups", "kept", "k"), SHAPES)
@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_group_limited_topk_is_megatrons(e: int, groups: int, kept: int, k: int, score_function: str) -> None:
    g = torch.Generator().manual_seed(e * 100 + k)
    logits = torch.randn(300, e, generator=g) * 2
    scores = torch.softmax(logits, -1) if score_function == "softmax" else torch.sigmoid(logits)
    _, ids = moe_utils.group_limited_topk(scores, k, scores.shape[0], e, groups, kept)
    spec = RoutingSpec(e, k, score_function, None, groups, kept, "topk_sum")
    ours = routing.choose(logits, spec=spec)
    assert torch.equal(_mask(ours, e), _mask(ids, e))
    if k // kept != 2 and score_function == "sigmoid":  # the old rule (top2_sum) disagrees somewhere
        old = routing.choose(logits, spec=RoutingSpec(e, k, score_function, None, groups, kept, "top2_sum"))
        assert not torch.equal(_mask(old, e), _mask(ids, e))


@pytest.mark.parametrize(
    ("score_function", "pre_softmax"), [("softmax", False), ("softmax", True), ("sigmoid", False)]
)
def test_routing_with_bias_and_groups_is_megatrons(score_function: str, pre_softmax: bool) -> None:
    """topk_routing_with_score_function: chosen experts and combine weights. Megatron's softmax without
    pre-softmax is moediag's topk_softmax; with it, softmax without renormalisation; sigmoid renormalises
    (pre-softmax applies to softmax only)."""
    e, k, groups, kept = 16, 6, 4, 2
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(200, e, generator=g) * 2
    bias = torch.randn(e, generator=g) * 0.1 if score_function == "sigmoid" else None
    probs, routing_map = moe_utils.topk_routing_with_score_function(
        logits, k, use_pre_softmax=pre_softmax, num_groups=groups, group_topk=kept,
        score_function=score_function, expert_bias=bias,
    )  # fmt: skip
    sf = "sigmoid" if score_function == "sigmoid" else ("softmax" if pre_softmax else "topk_softmax")
    norm = True if sf == "sigmoid" else (False if sf == "softmax" else None)
    r = routing.route(logits, spec=RoutingSpec(e, k, sf, norm, groups, kept, "topk_sum"), bias=bias)
    assert torch.equal(_mask(r.ids, e), routing_map)
    assert r.weights is not None
    ours = torch.zeros(200, e).scatter_(1, r.ids, r.weights)
    torch.testing.assert_close(ours, probs.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_logged_aux_loss_is_aux_loss_unbiased(make_trace, score_function: str) -> None:
    """Megatron's load_balancing_loss / coeff: compute_routing_scores_for_aux_loss (plain top-k, no bias,
    no groups) then switch_load_balancing_loss_func. moediag's aux_loss_unbiased; aux_loss (the routing
    in effect, with the bias and groups) differs."""
    e, k, n = 16, 4, 256
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(n, e, generator=g) * 1.5
    bias = torch.linspace(-0.4, 0.4, e) if score_function == "sigmoid" else None
    routing_map, scores = moe_utils.compute_routing_scores_for_aux_loss(logits, k, score_function)
    want = moe_utils.switch_load_balancing_loss_func(
        probs=scores, tokens_per_expert=routing_map.sum(0), total_num_tokens=n, topk=k,
        num_experts=e, moe_aux_loss_coeff=1.0,
    )  # fmt: skip
    sf = score_function if score_function == "sigmoid" else "topk_softmax"
    row = layer_row(make_trace, logits, k, sf, bias=bias, n_group=4, topk_group=2, group_score="topk_sum")
    assert row["aux_loss_unbiased"] == pytest.approx(float(want), rel=1e-5)
    if bias is not None:
        assert row["aux_loss"] != pytest.approx(float(want), rel=1e-3)


@pytest.mark.parametrize("policy", ["probs", "position"])
@pytest.mark.parametrize(("k", "cf"), [(1, 1.0), (2, 1.0), (2, 0.5), (4, 1.0)])
def test_token_dropping_is_megatrons(make_trace, policy: str, k: int, cf: float) -> None:
    """apply_router_token_dropping: the total dropped, and for probs (distinct weights) which ones, by
    position bucket. Megatron's position policy is a top-k over a 0/1 mask, so only its total is compared."""
    e, n = 8, 300
    g = torch.Generator().manual_seed(k * 10 + int(cf * 4))
    logits = torch.randn(n, e, generator=g) * 2 + torch.linspace(0, 3.0, e)  # skewed: some experts overflow
    probs, routing_map = moe_utils.topk_routing_with_score_function(logits, k, use_pre_softmax=True)
    kept_probs, kept_map = moe_utils.apply_router_token_dropping(
        probs, routing_map, router_topk=k, capacity_factor=cf, drop_policy=policy
    )
    dropped = routing_map & ~kept_map
    assert int(dropped.sum()) > 0
    row = layer_row(make_trace, logits, k, "softmax", capacity_factor=cf, norm_topk_prob="false")
    assert row["drop_rate_total"][str(cf)] == pytest.approx(int(dropped.sum()) / (n * k))
    if policy == "probs":
        by = row["drop_rate_by_position"]
        rates = by["rate"]["highest-weight"][str(cf)]
        got = [round(r * a) if r is not None else 0 for r, a in zip(rates, by["assignments"], strict=True)]
        positions = torch.nonzero(dropped)[:, 0]
        assert got == bucket_counts(positions)


def test_capacity_is_megatrons() -> None:
    from moediag.stats.capacity import capacities

    for tokens, e, cf, k, floor in [(64, 32, 1.0, 1, None), (64, 32, 1.0, 1, 4), (1000, 64, 1.25, 8, None)]:
        want = moe_utils.get_capacity(tokens * k, e, cf, floor)
        got = capacities(torch.tensor([tokens]), (cf,), k, e, floor or 0)
        assert int(got[0, 0]) == want


def test_topk_router_on_cpu_gloo(make_trace) -> None:
    """Megatron-Core's TopKRouter itself (gloo, world size 1, its own process): a sigmoid router with an
    expert bias and 6 of 16 experts from 2 of 4 groups. moediag routes the same logits to the same experts
    with the same weights (group_score topk_sum), and its aux_loss_unbiased is the loss Megatron logs."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bias = torch.linspace(-0.3, 0.3, 16).tolist()
    spec = dict(experts=16, hidden=12, top_k=6, groups=4, kept=2, score_function="sigmoid", seed=0, tokens=96)
    spec.update(port=port, bias=bias)
    script = Path(__file__).with_name("_megatron_router.py")
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    logits = torch.tensor(out["logits"])
    want_map = torch.tensor(out["routing_map"]).bool()
    rule = RoutingSpec(16, 6, "sigmoid", True, 4, 2, "topk_sum")
    r = routing.route(logits, spec=rule, bias=torch.tensor(bias))
    assert torch.equal(_mask(r.ids, 16), want_map)
    assert r.weights is not None
    ours = torch.zeros(96, 16).scatter_(1, r.ids, r.weights)
    torch.testing.assert_close(ours, torch.tensor(out["probs"]), rtol=1e-5, atol=1e-6)
    row = layer_row(
        make_trace,
        logits,
        6,
        "sigmoid",
        bias=torch.tensor(bias),
        n_group=4,
        topk_group=2,
        group_score="topk_sum",
    )
    assert row["aux_loss_unbiased"] == pytest.approx(out["load_balancing_loss"], rel=1e-5)
