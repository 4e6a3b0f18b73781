"""Losses and router behaviour against independent references and transformers' own aux loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from moediag.analysis import analyze_trace
from tests import _reference as ref
from tests.conftest import random_tensors, trace_metadata


def _np(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid", "topk_softmax"])
@pytest.mark.parametrize("seed", [0, 1])
def test_router_figures_match_reference(make_trace, score_function: str, seed: int) -> None:
    e, k, t = 8, 2, 96
    tensors = random_tensors(seed, tokens=t, num_experts=e, top_k=k, layers=(3,), skew=1.5)
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, score_function))
    row = analyze_trace(path, chunk_tokens=17).layer(3)
    z = _np(tensors["layers.3.router_logits"])
    ids = ref.route_ref(z, k, score_function)
    probs = ref.distribution_ref(z, score_function)
    assert row["load"] == ref.counts_of(ids, e)
    assert row["aux_loss"] == pytest.approx(ref.aux_loss(ids, probs, e), rel=1e-6)
    assert row["z_loss"] == pytest.approx(ref.z_loss(z), rel=1e-6)
    assert row["router_entropy"] == pytest.approx(ref.router_entropy(probs), rel=1e-6)
    assert row["router_entropy_norm"] == pytest.approx(ref.router_entropy(probs) / np.log(e), rel=1e-6)
    assert row["confidence"] == pytest.approx(ref.confidence(probs), rel=1e-6)
    margin_scores = ref.sigmoid(z) if score_function == "sigmoid" else ref.softmax(z)
    assert row["margin_mean"] == pytest.approx(ref.margin_mean(margin_scores, k), rel=1e-5)


@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (30.0, 0.0), (4.0, 1000.0), (0.01, -50.0)])
def test_softmax_entropy_and_lse_hold_for_confident_and_shifted_routers(
    make_trace, scale: float, offset: float
) -> None:
    """Entropy comes from log S - sum p (z - max) and logsumexp from max z - log(max p) (no log-softmax
    pass): both must stay accurate when the router is very confident, nearly uniform, or far from 0."""
    e, k, t = 16, 2, 200
    tensors = random_tensors(5, tokens=t, num_experts=e, top_k=k, layers=(0,), skew=1.0)
    tensors["layers.0.router_logits"] = tensors["layers.0.router_logits"] * scale + offset
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    row = analyze_trace(path, chunk_tokens=64).layer(0)
    z = _np(tensors["layers.0.router_logits"])
    probs = ref.softmax(z)
    entropy = ref.router_entropy(probs)
    assert row["router_entropy"] == pytest.approx(entropy, rel=1e-5, abs=1e-6)
    assert row["confidence"] == pytest.approx(ref.confidence(probs), rel=1e-6)
    assert row["z_loss"] == pytest.approx(ref.z_loss(z), rel=1e-6)


def test_margin_distribution(make_trace) -> None:
    e, k, t = 6, 2, 400
    tensors = random_tensors(5, tokens=t, num_experts=e, top_k=k, layers=(0,))
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    row = analyze_trace(path).layer(0)
    p = ref.softmax(_np(tensors["layers.0.router_logits"]))
    srt = -np.sort(-p, axis=1)
    m = srt[:, k - 1] - srt[:, k]
    for th, share in row["margin_below"].items():
        assert share == pytest.approx(float(np.mean(m < float(th))), abs=1 / t), th
    width = 1.0 / 200
    assert abs(row["margin_median"] - float(np.median(m))) <= 2 * width
    assert abs(row["margin_p10"] - float(np.quantile(m, 0.1))) <= 2 * width


def test_hand_computed_losses(make_trace) -> None:
    # Two tokens, E = 2, k = 1. Token 0 logits (0, 0): p = (.5, .5); token 1 logits (log 3, 0): p = (.75, .25)
    z = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]], dtype=torch.float32)
    ids = torch.tensor([[1], [0]], dtype=torch.int64)  # recorded choices
    path = make_trace(
        tensors={"layers.0.router_logits": z, "layers.0.topk_ids": ids},
        metadata=trace_metadata(2, 1, "softmax"),
    )
    row = analyze_trace(path).layer(0)
    # f = (1/2, 1/2), P = (0.625, 0.375) -> aux = 2 * (0.5*0.625 + 0.5*0.375) = 1
    assert row["aux_loss"] == pytest.approx(1.0)
    lse0, lse1 = np.log(2.0), np.log(4.0)
    assert row["z_loss"] == pytest.approx((lse0**2 + lse1**2) / 2, rel=1e-6)
    assert row["confidence"] == pytest.approx((0.5 + 0.75) / 2)
    h0 = np.log(2.0)
    h1 = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert row["router_entropy"] == pytest.approx((h0 + h1) / 2, rel=1e-6)
    # margins measured against the recorded choice: token 0: 0.5-0.5 = 0; token 1: chose expert 0 -> 0.5
    assert row["margin_mean"] == pytest.approx(0.25, rel=1e-6)


def test_aux_loss_uses_recorded_ids_not_recomputed_ones(make_trace) -> None:
    z = torch.tensor([[2.0, 0.0, 0.0, 0.0]] * 4)
    ids = torch.tensor([[3], [3], [3], [3]])
    path = make_trace(
        tensors={"layers.0.router_logits": z, "layers.0.topk_ids": ids},
        metadata=trace_metadata(4, 1, "softmax"),
    )
    row = analyze_trace(path).layer(0)
    p = ref.softmax(z.numpy())
    assert row["load"] == [0, 0, 0, 4]
    assert row["aux_loss"] == pytest.approx(4 * p[0, 3], rel=1e-6)
    # transformers' pooled value ignores recorded choices: softmax -> top-k -> expert 0
    assert analyze_trace(path).summary["hf_aux_loss"] == pytest.approx(4 * p[0, 0], rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_aux_loss_times_k_equals_transformers_on_one_layer(make_trace, k: int) -> None:
    e, t = 8, 120
    tensors = random_tensors(11 + k, tokens=t, num_experts=e, top_k=k, layers=(0,), skew=2.0)
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    a = analyze_trace(path, chunk_tokens=32)
    hf = float(load_balancing_loss_func((tensors["layers.0.router_logits"],), e, k))
    assert k * a.layer(0)["aux_loss"] == pytest.approx(hf, rel=1e-5)
    assert a.summary["hf_aux_loss"] == pytest.approx(hf, rel=1e-5)


def test_hf_aux_loss_pools_layers(make_trace) -> None:
    e, k, t = 8, 2, 64
    tensors = random_tensors(21, tokens=t, num_experts=e, top_k=k, layers=(0, 1, 5), skew=3.0)
    # make layer 5 very different so pooling differs from the mean of per-layer values
    tensors["layers.5.router_logits"] = tensors["layers.5.router_logits"] * 4
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    a = analyze_trace(path, chunk_tokens=10)
    gate = tuple(tensors[f"layers.{i}.router_logits"] for i in (0, 1, 5))
    hf = float(load_balancing_loss_func(gate, e, k))
    assert a.summary["hf_aux_loss"] == pytest.approx(hf, rel=1e-5)
    mean_of_layers = np.mean([float(load_balancing_loss_func((g,), e, k)) for g in gate])
    assert abs(hf - mean_of_layers) > 1e-4  # the test can tell pooling from averaging


def test_hf_aux_loss_with_attention_mask(make_trace) -> None:
    e, k, batch, seq = 6, 2, 4, 16
    tensors = random_tensors(3, tokens=batch * seq, num_experts=e, top_k=k, layers=(0, 2), skew=1.0)
    attn = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(batch):
        attn[b, seq - 3 * b :] = 0  # right padding of varying length
    tensors["tokens.mask"] = attn.reshape(-1).to(torch.uint8)
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    a = analyze_trace(path, chunk_tokens=7)
    gate = tuple(tensors[f"layers.{i}.router_logits"] for i in (0, 2))
    hf = float(load_balancing_loss_func(gate, e, k, attention_mask=attn))
    assert a.summary["hf_aux_loss"] == pytest.approx(hf, rel=1e-5)
    hf_one = float(load_balancing_loss_func(gate[:1], e, k, attention_mask=attn))
    assert k * a.layer(0)["aux_loss"] == pytest.approx(hf_one, rel=1e-5)
    assert a.layer(0)["tokens"] == int(attn.sum())


def test_hf_aux_loss_absent_without_logits(make_trace) -> None:
    tensors = random_tensors(0, tokens=32, num_experts=4, top_k=2, logits=False, ids=True, layers=(0,))
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 2, None)))
    assert a.summary["hf_aux_loss"] is None
    row = a.layer(0)
    for key in ("aux_loss", "z_loss", "router_entropy", "confidence", "margin_mean", "seq_aux_loss"):
        assert row[key] is None, key
    assert row["source"] == "topk_ids"


@pytest.mark.parametrize("groups", [None, (4, 2)])
def test_aux_loss_unbiased_counts_the_plain_top_k(make_trace, groups: tuple[int, int] | None) -> None:
    """With a selection bias (and group limits), aux_loss counts the routing in effect and
    aux_loss_unbiased the plain top-k of the scores (Megatron's compute_routing_scores_for_aux_loss)."""
    e, k, t = 8, 2, 120
    tensors = random_tensors(3, tokens=t, num_experts=e, top_k=k, layers=(0,), ids=False, skew=1.0)
    bias = torch.tensor([0.0, 0, 0, 0, 0, 0, 0.3, 0.5])
    tensors["layers.0.selection_bias"] = bias
    extra = {} if groups is None else {"n_group": str(groups[0]), "topk_group": str(groups[1])}
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "sigmoid", **extra))
    row = analyze_trace(path, chunk_tokens=31).layer(0)
    z = _np(tensors["layers.0.router_logits"])
    probs = ref.distribution_ref(z, "sigmoid")
    n_group, topk_group = groups or (None, None)
    in_effect = ref.route_ref(z, k, "sigmoid", bias.double().numpy(), n_group, topk_group)
    plain = ref.route_ref(z, k, "sigmoid")
    assert row["aux_loss"] == pytest.approx(ref.aux_loss(in_effect, probs, e), rel=1e-6)
    assert row["aux_loss_unbiased"] == pytest.approx(ref.aux_loss(plain, probs, e), rel=1e-6)
    assert row["aux_loss"] != pytest.approx(row["aux_loss_unbiased"], rel=1e-3)  # the bias shows
