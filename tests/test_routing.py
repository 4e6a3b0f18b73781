"""Routing policies against transformers' own router modules and plain-loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moediag import routing
from tests import _reference as ref


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.sort(a, dim=1).values, torch.sort(b, dim=1).values)


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
    r = routing.route(
        logits,
        top_k=4,
        score_function="sigmoid",
        norm_topk_prob=True,
        selection_bias=gate.e_score_correction_bias,
        n_group=4,
        topk_group=2,
    )
    assert _same_sets(r.ids, hf_ids)
    # weights: unbiased sigmoid scores of the chosen experts, renormalised (before the scaling factor)
    ours = {(t, int(i)): float(w) for t in range(200) for i, w in zip(r.ids[t], r.weights[t], strict=True)}
    theirs = {
        (t, int(i)): float(w) / 2.5 for t in range(200) for i, w in zip(hf_ids[t], hf_weights[t], strict=True)
    }
    assert ours.keys() == theirs.keys()
    assert np.allclose([ours[x] for x in ours], [theirs[x] for x in ours], rtol=1e-5)
    # the bias and the group limit both matter in this example (the test can fail)
    plain = routing.route(logits, top_k=4, score_function="sigmoid")
    assert not _same_sets(plain.ids, hf_ids)


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
    r = routing.route(logits, top_k=3, score_function="topk_softmax")
    assert torch.equal(r.ids, hf_ids)
    assert torch.allclose(r.weights, hf_scores, rtol=1e-5, atol=1e-7)


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
    r = routing.route(logits, top_k=2, score_function="softmax", norm_topk_prob=True)
    assert torch.equal(r.ids, hf_ids)
    assert torch.allclose(r.weights, hf_scores, rtol=1e-5, atol=1e-7)
    unnorm = routing.route(logits, top_k=2, score_function="softmax", norm_topk_prob=False)
    assert torch.allclose(unnorm.weights, torch.softmax(logits, -1).gather(1, hf_ids), rtol=1e-5)


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid", "topk_softmax"])
@pytest.mark.parametrize("groups", [None, (4, 2), (2, 1)])
def test_route_matches_loop_reference(score_function: str, groups: tuple[int, int] | None) -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(size=(60, 8)).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32) * 0.3 if score_function == "sigmoid" else None
    n_group, topk_group = groups or (None, None)
    r = routing.route(
        torch.from_numpy(z),
        top_k=3,
        score_function=score_function,
        selection_bias=None if bias is None else torch.from_numpy(bias),
        n_group=n_group,
        topk_group=topk_group,
    )
    want = ref.route_ref(z, 3, score_function, bias, n_group, topk_group)
    assert _same_sets(r.ids, torch.from_numpy(want))
    assert torch.allclose(
        r.probs.double(), torch.from_numpy(ref.distribution_ref(z, score_function)), atol=1e-6
    )


def test_margin_is_kth_minus_next() -> None:
    sel = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]])
    ids = routing.select(sel, 2)
    assert torch.allclose(routing.margin(sel, ids), torch.tensor([0.15, 0.1]))
    # a recorded choice that is not the plain top-k gives a negative margin
    assert routing.margin(sel, torch.tensor([[0, 3], [0, 3]]))[0].item() == pytest.approx(0.05 - 0.3)
    # k = E: no unchosen expert, margin undefined
    assert torch.isnan(routing.margin(sel, torch.tensor([[0, 1, 2, 3]] * 2))).all()


def test_unknown_score_function() -> None:
    with pytest.raises(ValueError):
        routing.distribution(torch.zeros(1, 2), "relu")


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
