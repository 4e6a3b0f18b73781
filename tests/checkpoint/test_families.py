"""Structure and parameter counts of real transformers checkpoints, checked against the model objects."""

from __future__ import annotations

import pytest

from moediag.checkpoint import analyze_checkpoint

from .conftest import FAMILIES, I_EXP, Factory

FAMILY_NAME = {"switch": "switch_transformers"}
VARIANTS = [
    *FAMILIES,
    "mixtral:sharded",
    "mixtral:fused",
    "deepseek_v3:fused",
    "qwen2_moe:fused",
    "olmoe:bf16",
]


@pytest.mark.parametrize("name", VARIANTS)
def test_counts_match_the_model(ckpt: Factory, name: str) -> None:
    built = ckpt(name)
    a = analyze_checkpoint(built.path, weights=False)
    s = a.to_dict()["summary"]
    base = name.split(":")[0]
    assert s["family"] == FAMILY_NAME.get(base, base)
    assert s["total_params"] == built.total
    assert s["active_params"] == built.active
    assert s["expert_params"] == sum(built.per_expert.values()) * built.num_experts
    assert s["num_experts"] == built.num_experts
    assert s["top_k"] == built.top_k
    assert s["expert_intermediate_size"] == I_EXP
    assert s["hidden_size"] == 32
    found = {st["name"]: st["moe_layers"] for st in s["stacks"] if st["moe_layers"]}
    assert found == built.moe_layers
    # nothing in the config contradicts these tensors
    assert s["warnings"] == []
    for layer in a.to_dict()["layers"]:
        assert layer["params_per_expert"] == built.per_expert[f"{layer['stack']}.{layer['layer']}"]


def test_mixtral_by_hand(ckpt: Factory) -> None:
    """H=32, I=24, E=4, k=2, two layers: one expert is 3*H*I; two experts per layer sit idle."""
    s = analyze_checkpoint(ckpt("mixtral").path, weights=False).to_dict()["summary"]
    expert = 3 * 32 * 24
    assert s["expert_params"] == 2 * 4 * expert
    assert s["active_params"] == s["total_params"] - 2 * (4 - 2) * expert
    assert s["score_function"] == "softmax" and s["norm_topk_prob"] is True
    # untied lm_head: the input embedding (64 x 32) is a lookup, not compute
    assert s["dense_equivalent"]["compute_params"] == s["active_params"] - 64 * 32
    assert s["dense_equivalent"]["flops_per_token"] == 2 * s["dense_equivalent"]["compute_params"]
    assert s["dense_equivalent"]["capacity_params"] == s["total_params"]


def test_qwen2_moe_shared_expert_and_mlp_only_layers(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("qwen2_moe").path, weights=False).to_dict()
    s = d["summary"]
    assert s["stacks"][0]["dense_layers"] == [1]
    assert s["moe_layers"] == 2 and s["dense_layers"] == 1
    assert s["shared_experts"] == 1
    # shared expert (3 * 32 * 20) plus its sigmoid gate (1 x 32), per MoE layer
    assert s["shared_expert_params"] == 2 * (3 * 32 * 20 + 32)
    assert all(layer["shared_experts"] == 1 for layer in d["layers"])


def test_deepseek_v3_dense_layers_bias_groups(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("deepseek_v3").path, weights=False).to_dict()
    s = d["summary"]
    assert s["stacks"][0]["dense_layers"] == [0]
    assert s["score_function"] == "sigmoid"
    assert (s["n_group"], s["topk_group"], s["routed_scaling_factor"]) == (2, 1, 2.5)
    assert s["selection_bias"] is True
    assert s["shared_experts"] == 1
    assert d["layers"][0]["selection_bias_tensor"] == "model.layers.1.mlp.gate.e_score_correction_bias"
    assert s["config_sources"]["score_function"] == "family default"
    # config declares an MTP layer that save_pretrained does not write
    assert s["mtp_layers"] == 0 and any("multi-token" in n for n in s["notes"])


def test_fused_on_disk_layouts(ckpt: Factory) -> None:
    for name, layout in (
        ("gpt_oss", "fused"),
        ("granitemoe", "fused"),
        ("dbrx", "fused"),
        ("mixtral", "per-expert"),
        ("mixtral:fused", "fused"),
    ):
        d = analyze_checkpoint(ckpt(name).path, weights=False).to_dict()
        assert {layer["layout"] for layer in d["layers"]} == {layout}, name
    d = analyze_checkpoint(ckpt("gpt_oss").path, weights=False).to_dict()
    assert d["summary"]["router_bias"] is True
    assert d["summary"]["score_function"] == "topk_softmax"


def test_switch_encoder_decoder(ckpt: Factory) -> None:
    d = analyze_checkpoint(ckpt("switch").path, weights=False).to_dict()
    stacks = {st["name"]: st for st in d["summary"]["stacks"]}
    assert stacks["encoder"]["moe_layers"] == [1] and stacks["encoder"]["dense_layers"] == [0]
    assert stacks["decoder"]["moe_layers"] == [1] and stacks["decoder"]["dense_layers"] == [0]
    assert d["summary"]["top_k"] == 1
    # tied embeddings: the shared matrix is also the output head, so it counts as compute
    de = d["summary"]["dense_equivalent"]
    assert de["compute_params"] == d["summary"]["active_params"]


def test_dense_model_is_valid_input(ckpt: Factory) -> None:
    built = ckpt("llama_dense")
    d = analyze_checkpoint(built.path).to_dict()
    s = d["summary"]
    assert s["is_moe"] is False and s["moe_layers"] == 0 and s["dense_layers"] == 2
    assert s["total_params"] == built.total == s["active_params"]
    assert d["layers"] == []
    assert any("no MoE layers" in n for n in s["notes"])


def test_single_file_and_index_inputs(ckpt: Factory) -> None:
    sharded = ckpt("mixtral:sharded").path
    index = sharded / "model.safetensors.index.json"
    assert index.is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    by_folder = analyze_checkpoint(sharded, weights=False).to_dict()
    by_index = analyze_checkpoint(index, weights=False).to_dict()
    assert by_folder["summary"]["total_params"] == by_index["summary"]["total_params"]
    assert by_index["meta"]["index"] == "model.safetensors.index.json"
    single = ckpt("mixtral").path / "model.safetensors"
    assert (
        analyze_checkpoint(single, weights=False).to_dict()["summary"]["active_params"]
        == ckpt("mixtral").active
    )
