"""FLOPs a token, active parameters and weight bytes against hand counts from the configs, and against
torch's FlopCounterMode run on the real models (which counts a dense model in full and misses the routed
experts of an MoE one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from moediag.checkpoint.compute import model_compute, uniform_touched

from .conftest import COMMON, I_EXP, Factory, H, write_checkpoint

V = COMMON["vocab_size"]
HEADS, KV = COMMON["num_attention_heads"], COMMON["num_key_value_heads"]
D = H // HEADS  # head_dim of the GQA families


def gqa_projections() -> int:
    """q, k, v, o of one layer (biases excluded)."""
    return H * HEADS * D + 2 * H * KV * D + HEADS * D * H


def gqa_attention(seq_len: int) -> int:
    """QK^T row and the weighted sum of values, per token, one layer."""
    return 2 * HEADS * (D + D) * seq_len


def swiglu(i: int) -> int:
    return 3 * H * i


def flops(matmul_params: int, attention: int) -> int:
    return 2 * matmul_params + attention


@pytest.mark.parametrize("seq_len", [16, 2048])
def test_llama_dense_hand_count(ckpt: Factory, seq_len: int) -> None:
    built = ckpt("llama_dense")
    mc = model_compute(built.path, seq_len=seq_len)
    layers = 2
    matmul = (
        layers * (gqa_projections() + swiglu(40)) + V * H
    )  # lm_head; the embedding lookup is not a matmul
    assert not mc.moe
    assert mc.total_params == mc.active_params == built.total
    assert mc.matmul_params == matmul
    assert mc.attention_flops_per_token == layers * gqa_attention(seq_len)
    assert mc.flops_per_token == flops(matmul, layers * gqa_attention(seq_len))
    assert mc.weight_bytes == 4 * built.total  # float32 as stored


@pytest.mark.parametrize("seq_len", [16, 2048])
def test_mixtral_hand_count(ckpt: Factory, seq_len: int) -> None:
    built = ckpt("mixtral")
    mc = model_compute(built.path, seq_len=seq_len)
    layers, e, k = 2, 4, 2
    per_layer = gqa_projections() + e * H + k * swiglu(I_EXP)  # router + k of the E experts
    assert mc.matmul_params == layers * per_layer + V * H
    assert mc.active_params == built.active
    assert mc.flops_per_token == flops(layers * per_layer + V * H, layers * gqa_attention(seq_len))
    assert mc.weight_bytes == 4 * built.total
    assert mc.expert_weight_bytes == 4 * layers * e * swiglu(I_EXP)


def test_qwen2_moe_shared_expert_and_dense_layer(ckpt: Factory) -> None:
    built = ckpt("qwen2_moe")
    mc = model_compute(built.path, seq_len=16)
    e, k = 4, 2
    moe = e * H + k * swiglu(I_EXP) + swiglu(20) + H  # router, routed, shared expert, its 1 x H gate
    dense = swiglu(40)  # layer 1 is in mlp_only_layers
    expected = 3 * gqa_projections() + 2 * moe + dense + V * H  # q/k/v biases are not matmuls
    assert mc.matmul_params == expected
    assert mc.flops_per_token == flops(expected, 3 * gqa_attention(16))
    assert mc.active_params == built.active


def _deepseek_hand(seq_len: int) -> tuple[int, int]:
    """MLA (q_lora 16, kv_lora 16, nope 8, rope 8, v 8), 1 dense layer then 2 MoE layers of 8 experts, top 2,
    one shared expert."""
    q_lora = kv_lora = 16
    nope, rope, v = 8, 8, 8
    mla = (
        H * q_lora  # q_a_proj
        + q_lora * HEADS * (nope + rope)  # q_b_proj
        + H * (kv_lora + rope)  # kv_a_proj_with_mqa
        + kv_lora * HEADS * (nope + v)  # kv_b_proj
        + HEADS * v * H  # o_proj
    )
    moe = 8 * H + 2 * swiglu(I_EXP) + swiglu(I_EXP)  # router, 2 routed, 1 shared of moe_intermediate_size
    matmul = 3 * mla + swiglu(40) + 2 * moe + V * H
    attention = 3 * 2 * HEADS * ((nope + rope) + v) * seq_len
    return matmul, attention


def test_deepseek_v3_mla_dense_layer_shared_expert(ckpt: Factory) -> None:
    built = ckpt("deepseek_v3")
    mc = model_compute(built.path, seq_len=2048)
    matmul, attention = _deepseek_hand(2048)
    assert mc.matmul_params == matmul
    assert mc.attention_flops_per_token == attention
    assert mc.flops_per_token == flops(matmul, attention)
    assert mc.active_params == built.active


def test_deepseek_v3_mtp_layer_is_left_out(ckpt: Factory, tmp_path: Path) -> None:
    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg: dict[str, Any] = json.loads((built.path / "config.json").read_text())
    cfg["num_nextn_predict_layers"] = 1
    mtp = {
        k.replace("model.layers.2.", "model.layers.3."): v.clone() for k, v in sd.items() if ".layers.2." in k
    }
    mtp["model.layers.3.eh_proj.weight"] = torch.randn(H, 2 * H)
    mtp["model.layers.3.enorm.weight"] = torch.ones(H)
    path = write_checkpoint(tmp_path / "mtp", {**sd, **mtp}, cfg)
    mc = model_compute(path, seq_len=16)
    matmul, attention = _deepseek_hand(16)
    assert mc.matmul_params == matmul and mc.attention_flops_per_token == attention
    assert mc.total_params == built.total
    assert mc.mtp_params == sum(
        v.numel() for k, v in mtp.items() if not k.endswith("e_score_correction_bias")
    )
    # stored bytes include the MTP layer; the experts a decode step reads do not
    assert mc.weight_bytes == sum(v.numel() * v.element_size() for v in {**sd, **mtp}.values())
    assert len(mc.expert_blocks) == 2


def test_bf16_weight_bytes_and_params(ckpt: Factory) -> None:
    built = ckpt("mixtral:bf16")
    mc = model_compute(built.path, seq_len=16)
    assert mc.weight_bytes == 2 * built.total
    assert mc.bytes_per_param == 2.0


def _counted(model: Any, seq_len: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.config._attn_implementation = "eager"  # its matmuls are visible; CPU SDPA kernels are not
    model.eval()
    x = torch.randint(0, V, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / seq_len


def test_flop_counter_agrees_on_dense_llama(ckpt: Factory) -> None:
    built = ckpt("llama_dense")
    assert _counted(built.model, 16) == model_compute(built.path, seq_len=16).flops_per_token


def test_flop_counter_misses_routed_experts(ckpt: Factory) -> None:
    """transformers' Mixtral runs its experts through kernels FlopCounterMode has no formula for: the
    counter sees attention, router and head, and exactly none of the k routed experts' matmuls."""
    built = ckpt("mixtral")
    mc = model_compute(built.path, seq_len=16)
    counted = _counted(built.model, 16)
    routed = 2 * 2 * 2 * swiglu(I_EXP)  # 2 FLOPs x 2 layers x top-2 experts
    assert mc.flops_per_token is not None
    assert counted == mc.flops_per_token - routed
    # so a naive count makes the MoE look cheaper than a dense model that costs the same
    dense = model_compute(ckpt("llama_dense").path, seq_len=16).flops_per_token
    assert dense is not None and counted < dense < mc.flops_per_token


def test_uniform_touched() -> None:
    assert uniform_touched(8, 2, 1) == pytest.approx(0.25)
    assert uniform_touched(8, 2, 2) == pytest.approx(1 - 0.75**2)
    assert uniform_touched(4, 4, 3) == 1.0


def test_serving_cost_hand_count(ckpt: Factory, tmp_path: Path) -> None:
    """Collapsed routing (every token to experts 0 and 1 of 4) reads half the routed experts at any B."""
    from moediag.analysis import analyze_trace
    from moediag.checkpoint.compute import serving_cost
    from moediag.render.html.report import render_report
    from tests.conftest import trace_metadata, write_raw

    built = ckpt("mixtral")
    t = 256
    ids = torch.tensor([[0, 1]] * t, dtype=torch.int32)
    trace = write_raw(
        tmp_path / "collapsed.safetensors",
        {"layers.0.topk_ids": ids, "layers.1.topk_ids": ids.clone()},
        trace_metadata(4, 2, "softmax"),
    )
    analysis = analyze_trace(trace)
    touched = {int(r["layer"]): (4, r["experts_touched"]) for r in analysis.layers}
    mc = model_compute(built.path)
    experts = 2 * 4 * swiglu(I_EXP)
    always = 4 * (built.total - experts - V * H)  # the input embedding: a step reads B of its rows
    assert mc.always_read_bytes == always
    cost = serving_cost(mc, touched)
    for b in ("1", "8", "32", "128"):
        assert cost[b]["step_bytes"] == always + 4 * experts // 2
        assert cost[b]["equal_bandwidth_dense_params"] == (always + 4 * experts // 2) // 4
        assert cost[b]["layers_from_trace"] == 2
    # without the trace's layers: uniform routing, 1 - (1/2)^B of the experts
    uniform = serving_cost(mc, {})
    assert uniform["8"]["step_bytes"] == round(always + 4 * experts * (1 - 0.5**8))
    assert uniform["8"]["per_layer_source"] == ["uniform", "uniform"]
    from moediag.checkpoint import analyze_checkpoint

    page = render_report(analysis, analyze_checkpoint(built.path, weights=False), figures=False)
    section = page.split('id="serving"', 1)[1].split("</section>", 1)[0]
    assert "weight bytes a step" in section and "equal bandwidth" in section
    assert "uniform routing is assumed" not in section


def test_fp8_experts_same_flops_fewer_bytes(ckpt: Factory, tmp_path: Path) -> None:
    """FP8 block-quantised experts: the same matmuls, stored in 1 byte a weight plus their scales."""
    import re

    from .conftest import fp8_quantise

    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = json.loads((built.path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [8, 16]}
    rx = re.compile(r"\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    saved = 0
    for name in [n for n in sd if rx.search(n)]:
        q, s = fp8_quantise(sd[name], (8, 16))
        saved += sd[name].numel() * 3 - s.numel() * s.element_size()  # 4 -> 1 byte a weight, plus scales
        sd[name] = q
        sd[name[: -len("weight")] + "weight_scale_inv"] = s
    path = write_checkpoint(tmp_path / "fp8", sd, cfg)
    plain, fp8 = model_compute(built.path, seq_len=16), model_compute(path, seq_len=16)
    assert fp8.flops_per_token == plain.flops_per_token and fp8.total_params == plain.total_params
    assert fp8.weight_bytes == plain.weight_bytes - saved
    assert fp8.always_read_bytes == plain.always_read_bytes  # scales belong to the experts
    assert fp8.expert_weight_bytes == plain.expert_weight_bytes - saved
