"""moediag.routing.route -- the one routing path of inspect, replay and compare -- against transformers' own
router modules and plain-loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag import routing
from moediag.trace import RoutingSpec
from tests import _reference as ref


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.sort(a, dim=1).values, torch.sort(b, dim=1).values)


def _pairs(ids: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> dict[tuple[int, int], float]:
    return {(t, int(i)): float(x) / scale for t in range(len(ids)) for i, x in zip(ids[t], w[t], strict=True)}


def _spec(
    sf: str, k: int, norm: bool | None = None, groups: tuple[int, int] | None = None, e: int = 8
) -> RoutingSpec:
    n_group, topk_group = groups or (None, None)
    return RoutingSpec(e, k, sf, norm, n_group, topk_group)


@pytest.mark.parametrize("seed", range(3))
def test_deepseek_v3_group_limited_sigmoid_matches_transformers(seed: int) -> None:
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    torch.manual_seed(seed)
    cfg = DeepseekV3Config(
        hidden_size=32,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )
    gate = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_()
        gate.e_score_correction_bias.copy_(torch.randn(16) * 0.5)
    hidden = torch.randn(200, 32)
    with torch.no_grad():
        logits, hf_weights, hf_ids = gate(hidden)
    spec = _spec("sigmoid", 4, True, (4, 2), e=16)
    bias = gate.e_score_correction_bias.detach()
    r = routing.route(logits, spec=spec, bias=bias)
    assert _same_sets(r.ids, hf_ids)
    assert torch.equal(routing.choose(logits, spec=spec, bias=bias), r.ids)
    # weights: unbiased sigmoid scores of the chosen experts, renormalised (before the scaling factor)
    assert r.weights is not None
    ours, theirs = _pairs(r.ids, r.weights), _pairs(hf_ids, hf_weights, 2.5)
    assert ours.keys() == theirs.keys()
    assert np.allclose([ours[x] for x in ours], [theirs[x] for x in ours], rtol=1e-5)
    # the margin is measured within the groups the rule kept: never negative when the rule chose
    assert r.margin is not None and bool((r.margin >= 0).all())
    want = ref.margin_ref(logits.numpy(), r.ids.numpy(), "sigmoid", bias.numpy(), 4, 2)
    np.testing.assert_allclose(r.margin.double().numpy(), want, rtol=1e-5, atol=1e-6)
    # the same margin when transformers' choice is given as recorded ids
    again = routing.route(logits, spec=spec, ids=hf_ids, bias=bias)
    assert again.margin is not None
    np.testing.assert_allclose(again.margin.double().numpy(), want, rtol=1e-5, atol=1e-6)
    # the bias and the group limit both matter in this example (the test can fail)
    assert not _same_sets(routing.route(logits, spec=_spec("sigmoid", 4, e=16)).ids, hf_ids)


def test_gpt_oss_topk_then_softmax_matches_transformers() -> None:
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

    torch.manual_seed(0)
    cfg = GptOssConfig(hidden_size=24, num_local_experts=8, num_experts_per_tok=3)
    gate = GptOssTopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_()
        gate.bias.normal_()
        hidden = torch.randn(150, 24)
        logits, hf_scores, hf_ids = gate(hidden)
    r = routing.route(logits, spec=_spec("topk_softmax", 3))
    assert torch.equal(r.ids, hf_ids)
    assert r.weights is not None and r.margin is not None
    assert torch.allclose(r.weights, hf_scores, rtol=1e-5, atol=1e-7)
    # margin in probability units (the softmax over all E), not logit units
    p = torch.softmax(logits, -1).sort(-1, descending=True).values
    torch.testing.assert_close(r.margin, p[:, 2] - p[:, 3], rtol=1e-5, atol=1e-7)
    assert bool((r.margin <= 1).all())


def test_mixtral_softmax_topk_matches_transformers() -> None:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=24, num_local_experts=8, num_experts_per_tok=2)
    gate = MixtralTopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_()
        hidden = torch.randn(150, 24)
        logits, hf_scores, hf_ids = gate(hidden)
    r = routing.route(logits, spec=_spec("softmax", 2, True))
    assert torch.equal(r.ids, hf_ids) and torch.equal(r.top1, hf_ids[:, 0])
    assert r.weights is not None
    assert torch.allclose(r.weights, hf_scores, rtol=1e-5, atol=1e-7)
    assert r.hf_ids is not None and torch.equal(r.hf_ids, hf_ids)


def test_qwen2_moe_softmax_without_renormalisation_matches_transformers() -> None:
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

    torch.manual_seed(1)
    cfg = Qwen2MoeConfig(hidden_size=24, num_experts=12, num_experts_per_tok=4, norm_topk_prob=False)
    gate = Qwen2MoeTopKRouter(cfg)
    with torch.no_grad():
        gate.weight.normal_()
        hidden = torch.randn(150, 24)
        logits, hf_scores, hf_ids = gate(hidden)
    r = routing.route(logits, spec=_spec("softmax", 4, False, e=12))
    assert torch.equal(r.ids, hf_ids)
    assert r.weights is not None and r.probs is not None
    assert torch.allclose(r.weights, hf_scores, rtol=1e-5, atol=1e-7)
    assert float(r.weights.sum(-1).min()) < 0.99  # not renormalised
    torch.testing.assert_close(r.probs, torch.softmax(logits, -1))


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid", "topk_softmax"])
@pytest.mark.parametrize("groups", [None, (4, 2), (2, 1)])
def test_route_matches_loop_reference(score_function: str, groups: tuple[int, int] | None) -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(size=(60, 8)).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32) * 0.3 if score_function == "sigmoid" else None
    n_group, topk_group = groups or (None, None)
    tb = None if bias is None else torch.from_numpy(bias)
    r = routing.route(torch.from_numpy(z), spec=_spec(score_function, 3, groups=groups), bias=tb)
    want = ref.route_ref(z, 3, score_function, bias, n_group, topk_group)
    assert _same_sets(r.ids, torch.from_numpy(want))
    assert r.probs is not None and r.margin is not None
    want_probs = torch.from_numpy(ref.distribution_ref(z, score_function))
    assert torch.allclose(r.probs.double(), want_probs, atol=1e-6)
    m = ref.margin_ref(z, want, score_function, bias, n_group, topk_group)
    np.testing.assert_allclose(r.margin.double().numpy(), m, rtol=1e-5, atol=1e-6)
    assert bool((r.margin[~torch.isnan(r.margin)] >= 0).all())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    score_function=st.sampled_from(routing.SCORE_FUNCTIONS),
    groups=st.sampled_from([None, (2, 1), (4, 2), (4, 3)]),
    k=st.integers(1, 4),
    with_bias=st.booleans(),
)
def test_recorded_ids_give_the_same_routing_as_chosen_ids(
    seed: int, score_function: str, groups: tuple[int, int] | None, k: int, with_bias: bool
) -> None:
    """Given the rule's own choice as recorded ids, every figure equals the one route computes itself."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(40, 8, generator=g) * 2
    bias = torch.randn(8, generator=g) * 0.2 if with_bias else None
    spec = _spec(score_function, k, True, groups)
    if groups and k > groups[1] * 8 // groups[0]:
        k = groups[1] * 8 // groups[0]
        spec = _spec(score_function, k, True, groups)
    chosen = routing.route(z, spec=spec, bias=bias)
    given_ids = routing.route(z, spec=spec, ids=chosen.ids, bias=bias)
    for name in ("ids", "top1", "weights", "probs", "margin", "lse", "softmax"):
        a, b = getattr(chosen, name), getattr(given_ids, name)
        torch.testing.assert_close(a, b, equal_nan=True, msg=name)
    assert chosen.filled and not given_ids.filled


def test_margin_hand_cases() -> None:
    sel = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])
    ids = routing.select(sel, 2)
    assert torch.allclose(routing.margin(sel, ids), torch.tensor([0.15, 0.1]))
    # a recorded choice that is not the plain top-k gives a negative margin
    assert routing.margin(sel, torch.tensor([[0, 3], [0, 3]]))[0].item() == pytest.approx(0.05 - 0.3)
    # ... unless the experts it skipped were not allowed (group limits)
    allowed = torch.tensor([[True, False, False, True]] * 2)
    assert torch.isnan(routing.margin(sel, torch.tensor([[0, 3], [0, 3]]), allowed)).all()
    allowed = torch.tensor([[True, False, True, True]] * 2)
    assert routing.margin(sel, torch.tensor([[0, 2], [0, 2]]), allowed)[0].item() == pytest.approx(0.1)
    # k = E: no unchosen expert, margin undefined
    assert torch.isnan(routing.margin(sel, torch.tensor([[0, 1, 2, 3]] * 2))).all()
    r = routing.route(torch.randn(5, 4), spec=_spec("softmax", 4, e=4))
    assert r.margin is not None and torch.isnan(r.margin).all()


def test_margin_under_group_limits_is_not_negative_where_the_old_one_was() -> None:
    """The issue's case: measured against every expert, 80% of group-limited tokens had a negative margin."""
    g = torch.Generator().manual_seed(0)
    z, bias = torch.randn(2000, 16, generator=g), torch.randn(16, generator=g) * 0.3
    spec = _spec("sigmoid", 4, True, (4, 2), e=16)
    r = routing.route(z, spec=spec, bias=bias)
    assert r.margin is not None and bool((r.margin >= 0).all())
    everywhere = routing.margin(torch.sigmoid(z) + bias, r.ids)  # no allowed mask: the old definition
    assert float((everywhere < 0).double().mean()) > 0.3


def test_ids_only_and_device_placement() -> None:
    ids = torch.tensor([[1, -1], [0, 2]])
    r = routing.route(None, spec=_spec("softmax", 2), ids=ids)
    assert torch.equal(r.top1, torch.tensor([1, 0])) and r.margin is None and r.probs is None
    with pytest.raises(ValueError):
        routing.route(None, spec=_spec("softmax", 2))
    full = routing.route(torch.randn(6, 8), spec=_spec("sigmoid", 2, True, (4, 2)))
    moved = full.to("cpu")
    assert torch.equal(moved.ids, full.ids) and moved.filled
    half = full.select(torch.tensor([True, False] * 3))
    assert len(half.ids) == 3 and half.margin is not None and len(half.margin) == 3
    batch = full.batch(num_experts=8, top_k=2, index=torch.arange(6))
    assert batch.margin is full.margin and batch.filled and len(batch) == 6


def test_unknown_score_function() -> None:
    with pytest.raises(ValueError):
        routing.distribution(torch.zeros(1, 2), "relu")
    with pytest.raises(ValueError):
        routing.route(torch.zeros(1, 2), spec=_spec("relu", 1))


@pytest.mark.parametrize(
    ("scale", "shift", "e"),
    [(1.0, 0.0, 64), (1e4, 0.0, 8), (1.0, 1e3, 16), (1e-6, 0.0, 64), (30.0, -50.0, 256), (1.0, 0.0, 1)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_parts_against_float64(scale: float, shift: float, e: int, dtype: torch.dtype) -> None:
    """logsumexp from max z - log(max p) and entropy from log S - sum p (z - max), against float64 on
    confident, flat, shifted and single-expert rows (ties included: bfloat16 rounds many logits equal)."""
    z = (torch.randn(2000, e, generator=torch.Generator().manual_seed(e)) * scale + shift).to(dtype)
    parts = routing.softmax_parts(z)
    zd = z.double()
    p = torch.softmax(zd, dim=-1)
    want_entropy = -(p * torch.log_softmax(zd, dim=-1)).sum(-1)
    torch.testing.assert_close(parts.softmax.double(), p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts.lse.double(), torch.logsumexp(zd, dim=-1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(parts.entropy.double(), want_entropy, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(parts.confidence.double(), p.amax(-1), rtol=1e-5, atol=1e-7)
    assert bool((parts.entropy >= -1e-6).all())


def test_group_score_rules_hand_case() -> None:
    """Two groups of 4; k = 4 from 1 group. Group A = [0.9, 0.0, 0.0, 0.0], B = [0.5, 0.45, 0.4, 0.0]:
    max picks A (0.9 > 0.5); top2_sum picks B (0.95 > 0.9); topk_sum (top 4 / 1 = 4) picks B (1.35)."""
    sel = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.5, 0.45, 0.4, 0.0]])
    keep = {
        rule: routing.group_mask(sel, 2, 1, "softmax", rule, top_k=4)[0, 0].item()
        for rule in ("max", "top2_sum", "topk_sum")
    }
    assert keep == {"max": True, "top2_sum": False, "topk_sum": False}
    # top_k / topk_group = 1: topk_sum is max; = 2: it is top2_sum
    c = torch.tensor([[0.9, 0.5, 0.0, 0.0, 0.8, 0.7, 0.6, 0.0]])  # A: max 0.9, top2 1.4; B: 0.8, 1.5, 2.1
    assert routing.group_mask(c, 2, 1, "sigmoid", "topk_sum", top_k=1)[0, 0].item()
    assert not routing.group_mask(c, 2, 1, "sigmoid", "topk_sum", top_k=2)[0, 0].item()
    assert not routing.group_mask(c, 2, 1, "sigmoid", "topk_sum", top_k=3)[0, 0].item()
    # no rule given: what traces always meant (top2_sum for sigmoid, max otherwise)
    assert not routing.group_mask(c, 2, 1, "sigmoid")[0, 0].item()
    assert routing.group_mask(c, 2, 1, "softmax")[0, 0].item()
    with pytest.raises(ValueError, match="needs top_k"):
        routing.group_mask(c, 2, 1, "sigmoid", "topk_sum")
    with pytest.raises(ValueError, match="unknown group_score"):
        routing.group_mask(c, 2, 1, "sigmoid", "sum")


def test_route_honours_the_specs_group_score() -> None:
    """The same logits route differently under max and topk_sum; margins follow the experts allowed."""
    z = torch.log(torch.tensor([[0.9, 0.01, 0.01, 0.01, 0.5, 0.45, 0.4, 0.01]]) / 0.1)
    base = dict(num_experts=8, top_k=2, score_function="softmax", n_group=2, topk_group=1)
    by_max = routing.route(z, spec=RoutingSpec(**base, group_score="max"))  # type: ignore[arg-type]
    by_sum = routing.route(z, spec=RoutingSpec(**base, group_score="topk_sum"))  # type: ignore[arg-type]
    assert 0 in by_max.ids[0].tolist() and set(by_max.ids[0].tolist()) <= {0, 1, 2, 3}
    assert set(by_sum.ids[0].tolist()) == {4, 5}
    assert by_sum.margin is not None and float(by_sum.margin[0]) > 0
    assert torch.equal(routing.choose(z, spec=RoutingSpec(**base, group_score="topk_sum")), by_sum.ids)  # type: ignore[arg-type]


def test_group_score_from_config() -> None:
    assert routing.group_score_from_config("moe_router_num_groups", "softmax") == "topk_sum"
    assert routing.group_score_from_config("moe_router_num_groups", "sigmoid") == "topk_sum"
    assert routing.group_score_from_config("n_group", "sigmoid") == "top2_sum"
    assert routing.group_score_from_config("n_group", "softmax") == "max"
