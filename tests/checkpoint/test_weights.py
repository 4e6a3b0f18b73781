"""Router, bias and expert-redundancy diagnostics; bounded streaming (dequantisation: test_dequant.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.checkpoint import (
    analyze_checkpoint,
    detect_layout,
    expert_similarity,
    normalise_config,
    open_inventory,
)
from moediag.checkpoint.weights import bias_stats, router_stats
from moediag.checkpoint.weights_pass import check_weights
from moediag.errors import UsageError

from .conftest import Factory


def _layer(d: dict, layer: int) -> dict:
    return next(x for x in d["layers"] if x["layer"] == layer)


def test_planted_duplicate_per_expert_on_disk(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("mixtral:dup").path).to_dict()
    l1 = _layer(d, 1)
    assert [p[:2] for p in l1["redundant_pairs"]] == [[1, 3]]
    assert l1["redundant_pairs"][0][2] == pytest.approx(1.0, abs=1e-6)
    assert l1["distinct_experts"] == 3
    assert _layer(d, 0)["redundant_pairs"] == [] and _layer(d, 0)["distinct_experts"] == 4
    # the shrunken router row is flagged low
    assert [o[0] for o in l1["router_norm_outliers"]] == [2] and l1["router_norm_outliers"][0][2] == "low"
    assert d["summary"]["health"]["status"] == "warn"
    assert d["summary"]["redundant_pairs"] == 1 and d["summary"]["min_distinct_experts"] == 3


def test_planted_duplicates_fused_on_disk(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("gpt_oss:dup").path).to_dict()
    l0 = _layer(d, 0)
    assert [p[:2] for p in l0["redundant_pairs"]] == [[0, 2]]  # a scaled copy has cosine 1
    assert l0["distinct_experts"] == 3
    d = analyze_checkpoint(ckpt("granitemoe:dup").path).to_dict()
    l0 = _layer(d, 0)
    assert sorted(p[:2] for p in l0["redundant_pairs"]) == [[0, 1], [0, 2], [1, 2]]
    assert l0["distinct_experts"] == 2


def test_no_duplicates_in_random_models(ckpt: Factory) -> None:
    for name in ("dbrx", "switch", "jamba", "deepseek_v3", "olmoe:bf16"):
        d = analyze_checkpoint(ckpt(name).path).to_dict()
        for layer in d["layers"]:
            assert layer["redundant_pairs"] == [], name
            assert layer["distinct_experts"] == layer["num_experts"], name
            assert len(layer["router_norms"]) == layer["num_experts"]


def test_selection_bias_statistics(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("deepseek_v3").path).to_dict()
    b = _layer(d, 2)["bias"]
    assert b["kind"] == "selection" and b["argmax"] == 5 and b["max"] == pytest.approx(0.5)
    assert [p[0] for p in b["pushed"]] == [5]
    assert _layer(d, 1)["bias"]["pushed"] == []
    assert len(b["values"]) == 8


def test_router_norms_match_the_model(ckpt: Factory) -> None:
    built = ckpt("mixtral")
    d = analyze_checkpoint(built.path).to_dict()
    want = built.model.model.layers[0].mlp.gate.weight.detach().norm(dim=1)
    assert _layer(d, 0)["router_norms"] == pytest.approx(want.tolist(), rel=1e-6)


def test_weights_off_reads_nothing(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("mixtral:dup").path, weights=False).to_dict()
    assert d["summary"]["weights_checked"] is False and d["summary"]["health"]["status"] == "unknown"
    assert all(x["redundant_pairs"] is None and x["router_norms"] is None for x in d["layers"])
    assert all(x["zero_experts"] is None and x["nonfinite"] is None for x in d["layers"])  # not read
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        check_weights(analyze_checkpoint(ckpt("mixtral:dup").path, weights=False), workers=0)
    from moediag.api import check, inspect_checkpoint, report
    from moediag.compare.dispatch import compare

    path = ckpt("mixtral:dup").path
    for call in (
        lambda: inspect_checkpoint(path, weights=False, workers=0),
        lambda: check(path, workers=-1),
        lambda: report([path], path.parent / "r.html", workers=0),
        lambda: compare(path, path, workers=0),
    ):
        with pytest.raises(UsageError, match="--workers must be at least 1"):
            call()


def test_layer_filter(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("qwen2_moe").path, layer=2).to_dict()
    assert [x["layer"] for x in d["layers"]] == [2]
    assert d["meta"]["layer"] == 2
    assert d["summary"]["moe_layers"] == 2  # the summary still describes the whole model


@settings(max_examples=8, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=40_000))
def test_streaming_equals_one_shot(ckpt: Factory, chunk: int) -> None:
    """Gram matrices accumulated over any chunking equal the one-shot result."""
    inv = open_inventory(ckpt("gpt_oss:dup").path)
    block = detect_layout(inv, normalise_config(inv.config)).blocks[0]
    whole = expert_similarity(inv, block, chunk_bytes=1 << 30)
    parts = expert_similarity(inv, block, chunk_bytes=chunk)
    assert whole.cosine is not None and parts.cosine is not None
    assert torch.allclose(whole.cosine, parts.cosine, atol=1e-6)
    assert [p[:2] for p in parts.pairs] == [p[:2] for p in whole.pairs]
    assert parts.bytes_read == whole.bytes_read


def test_router_stats_edge_cases() -> None:
    w = torch.ones(4, 8)
    s = router_stats(w)
    assert s["router_norm_outliers"] == []
    assert s["router_cosine"]["max"] == pytest.approx(1.0)
    assert len(s["router_cosine"]["similar_pairs"]) == 6
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w = w / w.norm(dim=1, keepdim=True)  # equal norms: only the two planted rows can stand out
    w[7] *= 0.05
    w[3] *= 10
    flagged = {i: d for i, _, d in router_stats(w)["router_norm_outliers"]}
    assert flagged == {7: "low", 3: "high"}
    # all-zero rows (a router never trained, or the zeros of a sparse file) have no cosine with anything
    z = torch.zeros(4, 8)
    z[0, 0] = 1.0
    zs = router_stats(z)["router_cosine"]
    assert zs["mean"] is None and zs["max"] is None and zs["similar_pairs"] == []
    # a scaled copy is a cosine of 1, not a float32 rounding above it
    c = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    c[2] = c[0] * 3.7
    cs = router_stats(c)["router_cosine"]
    assert cs["max"] <= 1.0 and cs["similar_pairs"][0][:2] == [0, 2] and cs["similar_pairs"][0][2] <= 1.0
    b = bias_stats(torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), "selection", "x")  # ERNIE's [1, E]
    assert b["argmax"] == 3 and b["pushed"][0][0] == 3 and math.isclose(b["range"], 1.0)
