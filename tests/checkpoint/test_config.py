"""Config normalisation: aliases, family defaults and every dense-layer rule."""

from __future__ import annotations

import pytest

from moediag.checkpoint.config import normalise_config


@pytest.mark.parametrize(
    ("raw", "experts", "top_k"),
    [
        ({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}, 8, 2),
        ({"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8}, 128, 8),
        ({"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8}, 256, 8),
        ({"model_type": "ernie4_5_moe", "moe_num_experts": 64, "moe_k": 6}, 64, 6),
        ({"model_type": "dbrx", "ffn_config": {"moe_num_experts": 16, "moe_top_k": 4}}, 16, 4),
        ({"model_type": "gpt_oss", "num_local_experts": 32, "experts_per_token": 4}, 32, 4),
        ({"model_type": "hunyuan_v1_moe", "num_experts": [16, 16], "moe_topk": [2, 2]}, 16, 2),
        ({"num_moe_experts": 64, "moe_router_topk": 6}, 64, 6),
        ({"n_routed_experts": 64, "n_activated_experts": 6, "dim": 2048}, 64, 6),
        ({"model_type": "switch_transformers", "num_experts": 8}, 8, 1),
        ({"model_type": "nllb-moe", "num_experts": 128}, 128, 2),
        ({"model_type": "llama4", "text_config": {"num_local_experts": 16, "num_experts_per_tok": 1}}, 16, 1),
    ],
)
def test_expert_and_top_k_aliases(raw: dict, experts: int, top_k: int) -> None:
    cfg = normalise_config(raw)
    assert cfg.num_experts == experts and cfg.top_k == top_k


def test_per_layer_lists() -> None:
    cfg = normalise_config({"model_type": "hunyuan_v1_moe", "num_experts": [8, 16], "moe_topk": [1, 2]})
    assert (cfg.num_experts_for(0), cfg.num_experts_for(1)) == (8, 16)
    assert (cfg.top_k_for(0), cfg.top_k_for(1)) == (1, 2)


@pytest.mark.parametrize(
    ("raw", "score", "renorm"),
    [
        ({"model_type": "deepseek_v3", "n_routed_experts": 8}, "sigmoid", True),
        ({"model_type": "deepseek_v2", "n_routed_experts": 8}, "softmax", False),
        ({"model_type": "deepseek_v2", "n_routed_experts": 8, "scoring_func": "sigmoid"}, "sigmoid", False),
        ({"model_type": "gpt_oss", "num_local_experts": 8}, "topk_softmax", True),
        ({"model_type": "granitemoe", "num_local_experts": 8}, "topk_softmax", True),
        ({"model_type": "mixtral", "num_local_experts": 8}, "softmax", True),
        ({"model_type": "jamba", "num_experts": 8}, "softmax", False),
        ({"model_type": "qwen2_moe", "num_experts": 8, "norm_topk_prob": True}, "softmax", True),
        (
            {"model_type": "dbrx", "ffn_config": {"moe_num_experts": 4, "moe_normalize_expert_weights": 1.0}},
            "softmax",
            True,
        ),
        ({"num_moe_experts": 8, "moe_router_score_function": "softmax"}, "topk_softmax", True),
        (
            {"num_moe_experts": 8, "moe_router_score_function": "softmax", "moe_router_pre_softmax": True},
            "softmax",
            None,
        ),
        (
            {"n_routed_experts": 8, "n_activated_experts": 2, "dim": 64, "score_func": "sigmoid"},
            "sigmoid",
            None,
        ),
    ],
)
def test_score_function_and_renormalisation(raw: dict, score: str, renorm: bool | None) -> None:
    cfg = normalise_config(raw)
    assert cfg.score_function == score
    assert cfg.norm_topk_prob is renorm


def test_groups_scaling_and_sources() -> None:
    cfg = normalise_config(
        {
            "model_type": "deepseek_v3",
            "n_routed_experts": 256,
            "n_group": 8,
            "topk_group": 4,
            "routed_scaling_factor": 2.5,
            "num_nextn_predict_layers": 1,
        }
    )
    assert (cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor, cfg.mtp_layers) == (8, 4, 2.5, 1)
    assert cfg.sources["score_function"] == "family default"
    assert cfg.sources["num_experts"] == "n_routed_experts"
    native = normalise_config(
        {
            "n_routed_experts": 8,
            "n_activated_experts": 2,
            "dim": 64,
            "n_expert_groups": 4,
            "n_limited_groups": 2,
            "route_scale": 1.5,
        }
    )
    assert (native.n_group, native.topk_group, native.routed_scaling_factor) == (4, 2, 1.5)
    meg = normalise_config(
        {
            "num_moe_experts": 8,
            "moe_router_num_groups": 2,
            "moe_router_group_topk": 1,
            "moe_router_topk_scaling_factor": 3.0,
        }
    )
    assert (meg.n_group, meg.topk_group, meg.routed_scaling_factor) == (2, 1, 3.0)
    # how a group is scored: Megatron-Core's keys mean its group_limited_topk (sum of the top k / groups)
    assert meg.group_score == "topk_sum" and "moe_router_num_groups" in meg.sources["group_score"]
    assert cfg.group_score == "top2_sum"  # DeepSeek-V3 (sigmoid)


def _moe(raw: dict, n: int, stack: str = "model") -> list[int]:
    cfg = normalise_config(raw)
    return [L for L in range(n) if cfg.expected_moe(stack, L)]


def test_dense_layer_rules() -> None:
    assert _moe({"model_type": "deepseek_v3", "n_routed_experts": 8, "first_k_dense_replace": 3}, 6) == [
        3,
        4,
        5,
    ]
    assert _moe({"n_routed_experts": 8, "n_dense_layers": 1, "dim": 8, "n_activated_experts": 2}, 3) == [1, 2]
    assert _moe(
        {"model_type": "qwen2_moe", "num_experts": 8, "mlp_only_layers": [1], "decoder_sparse_step": 1}, 4
    ) == [0, 2, 3]
    assert _moe(
        {"model_type": "qwen2_moe", "num_experts": 8, "mlp_only_layers": [], "decoder_sparse_step": 2}, 4
    ) == [1, 3]
    assert _moe(
        {
            "model_type": "deepseek_v32",
            "n_routed_experts": 8,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
        },
        3,
    ) == [1, 2]
    assert _moe(
        {"model_type": "llama4", "text_config": {"num_local_experts": 16, "moe_layers": [1, 3]}}, 4
    ) == [1, 3]
    assert _moe(
        {"model_type": "llama4", "text_config": {"num_local_experts": 16, "interleave_moe_layer_step": 2}}, 4
    ) == [1, 3]
    assert _moe({"num_moe_experts": 8, "moe_layer_freq": "[0]*1+[1]*3"}, 4) == [1, 2, 3]
    assert _moe({"num_moe_experts": 8, "moe_layer_freq": [0, 1, 0, 1]}, 4) == [1, 3]
    assert _moe({"num_moe_experts": 8, "moe_layer_freq": 2}, 4) == [0, 2]
    assert _moe({"model_type": "arctic", "num_local_experts": 8, "moe_layer_frequency": 2}, 4) == [1, 3]
    assert _moe(
        {"model_type": "jamba", "num_experts": 8, "expert_layer_period": 2, "expert_layer_offset": 1}, 4
    ) == [1, 3]
    assert _moe(
        {
            "model_type": "ernie4_5_moe",
            "moe_num_experts": 8,
            "moe_layer_start_index": 1,
            "moe_layer_end_index": -1,
            "moe_layer_interval": 1,
            "num_hidden_layers": 4,
        },
        4,
    ) == [1, 2, 3]
    sw = {
        "model_type": "switch_transformers",
        "num_experts": 8,
        "encoder_sparse_step": 2,
        "decoder_sparse_step": 1,
    }
    assert _moe(sw, 4, "encoder") == [1, 3] and _moe(sw, 4, "decoder") == [0, 1, 2, 3]
    nl = {"model_type": "nllb-moe", "num_experts": 8, "encoder_sparse_step": 4, "decoder_sparse_step": 4}
    assert _moe(nl, 8, "model.encoder") == [3, 7]
    assert (
        normalise_config({"model_type": "mixtral", "num_local_experts": 8}).expected_moe("model", 0) is None
    )
    assert (
        normalise_config({"model_type": "granitemoehybrid", "num_local_experts": 0}).expected_moe("model", 0)
        is False
    )


def test_empty_config() -> None:
    cfg = normalise_config(None)
    assert cfg.num_experts is None and cfg.score_function is None and cfg.expected_moe("model", 0) is None


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True, [2, 0]])
def test_sizes_that_are_not_positive_integers_are_ignored_with_a_warning(bad: object) -> None:
    """A top-k of 0 gave an active-parameter count of a model that uses no expert; ``"2"`` was silently
    "not in the config". Both are ignored now, and said so."""
    from moediag.checkpoint.config import unusable_sizes

    cfg = normalise_config({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": bad})
    assert cfg.top_k is None and cfg.num_experts == 8
    (warning,) = unusable_sizes(cfg)
    assert warning.startswith("config num_experts_per_tok = ") and "not a usable top-k" in warning
    assert unusable_sizes(normalise_config({"num_local_experts": 8, "num_experts_per_tok": 2.0})) == []
    # no experts and a top-k of 0 is a dense model saying so: nothing to warn about
    dense = normalise_config(
        {"model_type": "granitemoehybrid", "num_local_experts": 0, "num_experts_per_tok": 0}
    )
    assert unusable_sizes(dense) == [] and dense.num_experts == 0
