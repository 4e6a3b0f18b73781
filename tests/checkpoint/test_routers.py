"""Router descriptions for replay: names, routing settings, and routing that matches the model's router."""

from __future__ import annotations

import torch

from moediag import routing
from moediag.checkpoint import (
    load_router_bias,
    load_router_weight,
    load_selection_bias,
    open_inventory,
    router_specs,
)

from .conftest import Factory


def _replay(path, spec, x: torch.Tensor) -> routing.Routed:  # type: ignore[no-untyped-def]
    inv = open_inventory(path)
    w = load_router_weight(inv, spec)
    logits = x @ w.T
    b = load_router_bias(inv, spec)
    if b is not None:
        logits = logits + b
    return routing.route(logits, spec=spec, bias=load_selection_bias(inv, spec))


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.sort(dim=-1).values, b.sort(dim=-1).values)


def test_mixtral_spec_and_replay(ckpt: Factory) -> None:
    built = ckpt("mixtral")
    specs = router_specs(built.path)
    assert [(s.stack, s.layer, s.block) for s in specs] == [
        ("model", 0, "block_sparse_moe"),
        ("model", 1, "block_sparse_moe"),
    ]
    s = specs[1]
    assert s.weight == "model.layers.1.block_sparse_moe.gate.weight"
    assert (s.num_experts, s.top_k, s.score_function, s.norm_topk_prob) == (4, 2, "softmax", True)
    assert s.logit_bias is None and s.selection_bias is None and s.hidden_size == 32
    w = load_router_weight(built.path, s)
    assert w.dtype == torch.float32 and torch.equal(w, built.model.model.layers[1].mlp.gate.weight.detach())
    x = torch.randn(50, 32)
    _, scores, ids = built.model.model.layers[1].mlp.gate(x)
    r = _replay(built.path, s, x)
    assert _same_sets(r.ids, ids)
    assert r.weights is not None
    assert torch.allclose(r.weights.sort(dim=-1).values, scores.sort(dim=-1).values, atol=1e-6)


def test_deepseek_v3_spec_and_replay(ckpt: Factory) -> None:
    built = ckpt("deepseek_v3")
    specs = router_specs(built.path)
    assert [s.layer for s in specs] == [1, 2]
    s = specs[1]
    assert s.selection_bias == "model.layers.2.mlp.gate.e_score_correction_bias"
    assert (s.score_function, s.n_group, s.topk_group, s.routed_scaling_factor, s.norm_topk_prob) == (
        "sigmoid",
        2,
        1,
        2.5,
        True,
    )
    assert s.to_dict()["weight"] == "model.layers.2.mlp.gate.weight"
    gate = built.model.model.layers[2].mlp.gate
    x = torch.randn(64, 32)
    _, topk_w, ids = gate(x)
    r = _replay(built.path, s, x)
    assert _same_sets(r.ids, ids)
    assert r.weights is not None
    got = (r.weights * s.routed_scaling_factor).sort(dim=-1).values
    assert torch.allclose(got, topk_w.sort(dim=-1).values, atol=1e-5)


def test_gpt_oss_logit_bias_replay(ckpt: Factory) -> None:
    built = ckpt("gpt_oss")
    s = router_specs(built.path)[0]
    assert s.logit_bias == "model.layers.0.mlp.router.bias" and s.score_function == "topk_softmax"
    x = torch.randn(40, 32)
    _, scores, ids = built.model.model.layers[0].mlp.router(x)
    r = _replay(built.path, s, x)
    assert _same_sets(r.ids, ids)


def test_specs_on_fused_and_per_expert_agree(ckpt: Factory) -> None:
    a = [s.to_dict() for s in router_specs(ckpt("qwen2_moe").path)]
    b = [s.to_dict() for s in router_specs(ckpt("qwen2_moe:fused").path)]
    assert [(x["layer"], x["weight"], x["num_experts"], x["top_k"]) for x in a] == [
        (x["layer"], x["weight"], x["num_experts"], x["top_k"]) for x in b
    ]
