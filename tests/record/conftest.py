"""Tiny MoE models of several transformers families, built from config classes and saved once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 300
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _mixtral() -> Any:
    cfg = transformers.MixtralConfig(
        **COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
    )
    return transformers.MixtralForCausalLM(cfg)


def _qwen2_moe() -> Any:
    cfg = transformers.Qwen2MoeConfig(
        **COMMON,
        intermediate_size=64,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=6,
        num_experts_per_tok=2,
    )
    return transformers.Qwen2MoeForCausalLM(cfg)


def _olmoe() -> Any:
    cfg = transformers.OlmoeConfig(**COMMON, intermediate_size=48, num_experts=8, num_experts_per_tok=2)
    return transformers.OlmoeForCausalLM(cfg)


def _deepseek_v3() -> Any:
    cfg = transformers.DeepseekV3Config(
        **{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
        intermediate_size=64,
        moe_intermediate_size=24,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = transformers.DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():  # a real selection bias, so that choosing differs from the plain top-k
        for layer in (1, 2):
            gate = model.model.layers[layer].mlp.gate
            gate.weight.normal_(0, 0.5)
            gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, 8))
    return model


def _gpt_oss() -> Any:
    cfg = transformers.GptOssConfig(
        **COMMON,
        intermediate_size=48,
        num_local_experts=4,
        num_experts_per_tok=2,
        head_dim=8,
        sliding_window=16,
    )
    model = transformers.GptOssForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.router.bias.normal_(0, 0.5)
    return model


def _granitemoe() -> Any:
    cfg = transformers.GraniteMoeConfig(
        **COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
    )
    return transformers.GraniteMoeForCausalLM(cfg)


def _dense() -> Any:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, intermediate_size=48))


BUILDERS: dict[str, Callable[[], Any]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "granitemoe": _granitemoe,
}
FAMILIES = list(BUILDERS)


def build(name: str) -> Any:
    torch.manual_seed(0)
    builder = BUILDERS.get(name) or {"dense": _dense}[name]
    return builder().eval()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family saved with save_pretrained (plus a dense Llama), once per session."""
    root = tmp_path_factory.mktemp("models")
    logging = transformers.utils.logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    out = {}
    for name in [*FAMILIES, "dense"]:
        build(name).save_pretrained(root / name)
        out[name] = root / name
    return out


PROSE = (
    "The quick brown fox jumps over the lazy dog. Routing decides which experts see which tokens, "
    "and a healthy router spreads the load. "
) * 6
CODE = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i * 2))\n" * 6


@pytest.fixture(scope="session")
def texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("texts")
    (root / "prose.txt").write_text(PROSE)
    (root / "code.py").write_text(CODE)
    return {"prose": root / "prose.txt", "code": root / "code.py"}
