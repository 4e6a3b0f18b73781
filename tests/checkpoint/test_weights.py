"""Router, bias and expert-redundancy diagnostics; FP8 and MXFP4 dequantisation; bounded streaming."""

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
from moediag.checkpoint.dequant import dequant_fp8, dequant_mxfp4
from moediag.checkpoint.weights import bias_stats, router_stats

from .conftest import Factory, fp8_quantise, mxfp4_quantise


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
    b = bias_stats(torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), "selection", "x")  # ERNIE's [1, E]
    assert b["argmax"] == 3 and b["pushed"][0][0] == 3 and math.isclose(b["range"], 1.0)


def test_fp8_dequantisation_round_trip() -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    q, s = fp8_quantise(w, (8, 16))
    back = dequant_fp8(q, s, (8, 16))
    assert torch.nn.functional.cosine_similarity(back.flatten(), w.flatten(), dim=0) > 0.999
    # a row range starting mid-block uses the right scale rows
    part = dequant_fp8(q[10:20], s[1:3], (8, 16), row0=10)
    assert torch.equal(part, back[10:20])


def test_mxfp4_dequantisation_by_hand() -> None:
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x21  # low nibble 1 -> 0.5 (even slot), high nibble 2 -> 1.0 (odd slot)
    blocks[0, 1] = 0xF9  # low 9 -> -0.5, high 15 -> -6
    out = dequant_mxfp4(blocks, torch.tensor([128], dtype=torch.uint8))  # scale 2^(128-127) = 2
    assert out.shape == (32,)
    assert out[:4].tolist() == [1.0, 2.0, -1.0, -12.0]
    torch.manual_seed(1)
    w = torch.randn(3, 5, 64)
    b, sc = mxfp4_quantise(w)
    back = dequant_mxfp4(b, sc)
    assert back.shape == w.shape
    assert torch.nn.functional.cosine_similarity(back.flatten(), w.flatten(), dim=0) > 0.95


# -- dequantisation: bit for bit against torch's own conversion and transformers' MXFP4 ------------------


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # NaN == NaN, -0 != +0: exact identity of every value


def _expanded(s: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    return s.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[: shape[0], : shape[1]]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_decode_every_code_is_torchs(dtype: torch.dtype) -> None:
    from moediag.checkpoint.dequant import decode_fp8

    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    for n in (256, 255, 1):  # pairs, pairs plus a single tail, one code alone
        c = codes[:n].view(dtype)
        assert torch.equal(_bits(decode_fp8(c)), _bits(c.float()))
    kind = "F8_E4M3" if dtype == torch.float8_e4m3fn else "F8_E5M2"
    assert torch.equal(_bits(decode_fp8(codes, kind)), _bits(codes.view(dtype).float()))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    br=st.sampled_from([1, 7, 128]),
    bc=st.sampled_from([1, 16, 128]),
    e5m2=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fp8_dequant_bit_for_bit(rows: int, cols: int, br: int, bc: int, e5m2: bool, seed: int) -> None:
    dtype = torch.float8_e5m2 if e5m2 else torch.float8_e4m3fn
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, generator=g)
    w = raw.view(dtype)
    s = torch.rand(-(-rows // br), -(-cols // bc), generator=g) * 3
    ref = w.float() * _expanded(s, (br, bc), (rows, cols))
    assert torch.equal(_bits(dequant_fp8(w, s, (br, bc))), _bits(ref))
    # uint8 codes with an explicit kind, into a given buffer
    out = torch.empty(rows, cols)
    dequant_fp8(raw, s, (br, bc), kind="F8_E5M2" if e5m2 else "F8_E4M3", out=out)
    assert torch.equal(_bits(out), _bits(ref))
    # a row range starting mid-block, with only the scale rows that cover it
    a, b = rows // 3, rows
    part = dequant_fp8(w[a:b], s[a // br :], (br, bc), row0=a)
    assert torch.equal(_bits(part), _bits(ref[a:b]))
    # arbitrary rows in any order (the sampled screen) with the whole scale tensor
    pick = torch.randperm(rows, generator=g)[: max(1, rows // 4)]
    got = dequant_fp8(w[pick].contiguous(), s, (br, bc), rows=pick)
    assert torch.equal(_bits(got), _bits(ref[pick]))


def test_fp8_dequant_scalar_and_per_row_scales() -> None:
    raw = torch.randint(0, 256, (9, 33), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    w = raw.view(torch.float8_e4m3fn)
    assert torch.equal(_bits(dequant_fp8(w, torch.tensor(0.25), (9, 33))), _bits(w.float() * 0.25))
    per_row = torch.rand(9)
    assert torch.equal(_bits(dequant_fp8(w, per_row, (1, 33))), _bits(w.float() * per_row[:, None]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_dequant_matches_transformers(dtype: torch.dtype) -> None:
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (3, 10, 6, 16), dtype=torch.uint8, generator=g)  # [E, rows, G, 16]
    scales = torch.randint(100, 150, (3, 10, 6), dtype=torch.uint8, generator=g)
    scales[0, 0, 0], scales[1, 2, 3] = 0, 254  # the extremes of the exponent byte
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, G*32, rows]
    ours = dequant_mxfp4(blocks, scales)  # [E, rows, G*32] float32
    assert torch.equal(ours.to(dtype).transpose(1, 2), theirs)
    if dtype == torch.float32:
        assert torch.equal(_bits(ours.transpose(1, 2)), _bits(theirs))
