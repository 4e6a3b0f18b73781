"""What config.json keys mean, whatever the family calls them, and the family defaults for what a config
leaves out (shared/design/checkpoints.md, sections B and D2): the vocabulary of
:mod:`moediag.checkpoint.config`, which does the normalising."""

from __future__ import annotations

_SCOPES = ("", "text_config", "language_config", "llm_config", "ffn_config")

NUM_EXPERTS_KEYS = (
    "num_local_experts",
    "num_experts",
    "n_routed_experts",
    "moe_num_experts",
    "num_moe_experts",
)
TOP_K_KEYS = (
    "num_experts_per_tok",
    "experts_per_token",
    "moe_k",
    "moe_topk",
    "moe_top_k",
    "moe_router_topk",
    "n_activated_experts",
)
SHARED_KEYS = ("n_shared_experts", "moe_num_shared_experts", "num_shared_expert", "num_shared_experts")
SHARED_I_KEYS = (
    "shared_expert_intermediate_size",
    "shared_intermediate_size",
    "moe_shared_expert_intermediate_size",
)
EXPERT_I_KEYS = (
    "moe_intermediate_size",
    "ffn_hidden_size",
    "moe_ffn_hidden_size",
    "moe_inter_dim",
    "intermediate_size",
    "d_ff",
    "encoder_ffn_dim",
)
HIDDEN_KEYS = ("hidden_size", "d_model", "dim", "n_embd")
LAYERS_KEYS = ("num_hidden_layers", "n_layers", "num_layers")
SCORE_KEYS = ("scoring_func", "score_func", "moe_router_score_function")
RENORM_KEYS = ("norm_topk_prob", "moe_normalize_expert_weights")
GROUP_KEYS = (
    ("n_group", "topk_group"),
    ("n_expert_groups", "n_limited_groups"),
    ("moe_router_num_groups", "moe_router_group_topk"),
)
SCALE_KEYS = ("routed_scaling_factor", "route_scale", "moe_router_topk_scaling_factor")
AUX_KEYS = (
    "router_aux_loss_coef",
    "aux_loss_coef",
    "aux_loss_alpha",
    "moe_loss_weight",
    "moe_aux_loss_coeff",
)
Z_KEYS = ("router_z_loss_coef", "moe_z_loss_coeff")
CAPACITY_KEYS = (
    "expert_capacity",
    "moe_expert_capacity_factor",
    "moe_train_capacity_factor",
    "moe_eval_capacity_factor",
)
MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers", "mtp_num_layers")

# Family defaults where config.json is silent (shared/design/checkpoints.md, sections B and D2).
SIGMOID_FAMILIES = frozenset(
    {
        "deepseek_v3",
        "deepseek_v32",
        "kimi_k2",
        "glm4_moe",
        "glm4_moe_lite",
        "glm4v_moe",
        "dots1",
        "minimax_m2",
        "llama4",
        "llama4_text",
        "afmoe",
        "exaone_moe",
        "kimi_linear",
        "nemotron_h",
    }
)
TOPK_SOFTMAX_FAMILIES = frozenset({"gpt_oss", "granitemoe", "granitemoeshared", "granitemoehybrid", "jetmoe"})
RENORM_TRUE_FAMILIES = frozenset(
    {
        "mixtral",
        "minimax",
        "minimax_m2",
        "hunyuan_v1_moe",
        "ernie4_5_moe",
        "dbrx",
        "phimoe",
        "deepseek_v3",
        "deepseek_v32",
        "glm4_moe",
    }
)
RENORM_FALSE_FAMILIES = frozenset(
    {
        "jamba",
        "llama4",
        "llama4_text",
        "deepseek_v2",
        "qwen2_moe",
        "olmoe",
        "switch_transformers",
        "nllb-moe",
        "nllb_moe",
    }
)
TOP_K_FAMILIES = {"switch_transformers": 1, "nllb-moe": 2, "nllb_moe": 2}
