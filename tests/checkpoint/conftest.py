"""Real tiny checkpoints written by transformers, plus hand-built headers for formats transformers does not
write (FP8 block scales, MXFP4, DeepSeek's inference format, MTP layers, Megatron names).

Everything is built once per session under tmp_path_factory and cached. Ground truth comes from the model
objects (summing ``numel``), never from moediag.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")

H = 32  # hidden size; expert intermediate I = 24 (I != H, 2I != H)
I_EXP = 24
COMMON = dict(vocab_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@dataclass
class Built:
    """A checkpoint on disk and what the model object says about it."""

    path: Path
    model: Any
    num_experts: int
    top_k: int
    total: int  # sum of numel over model.parameters()
    moe_layers: dict[str, list[int]]  # stack -> MoE layer indices, from the module tree
    per_expert: dict[str, int] = field(default_factory=dict)  # "stack.L" -> params of one expert
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> int:
        """total - sum over MoE layers of (E - k) * params of one expert (all from the model object)."""
        return self.total - sum((self.num_experts - self.top_k) * p for p in self.per_expert.values())


def _ground_truth(model: Any, num_experts: int, top_k: int, path: Path, **extra: Any) -> Built:
    total = sum(p.numel() for p in model.parameters())
    per_expert: dict[str, int] = {}
    moe: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if not name.endswith(".experts") or ".shared" in name:
            continue
        parts = name.split(".")
        idx = next(i for i, p in enumerate(parts) if p.isdigit())
        stack = ".".join(parts[: idx - 1])
        layer = int(parts[idx])
        n = sum(p.numel() for p in module.parameters())
        per_expert[f"{stack}.{layer}"] = n // num_experts
        moe.setdefault(stack, []).append(layer)
    return Built(
        path, model, num_experts, top_k, total, {k: sorted(v) for k, v in moe.items()}, per_expert, extra
    )


def _models() -> dict[str, Callable[[], tuple[Any, int, int]]]:
    import transformers as T

    def mixtral() -> tuple[Any, int, int]:
        cfg = T.MixtralConfig(
            hidden_size=H,
            intermediate_size=I_EXP,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **COMMON,
        )
        return T.MixtralForCausalLM(cfg), 4, 2

    def qwen2_moe() -> tuple[Any, int, int]:
        cfg = T.Qwen2MoeConfig(
            hidden_size=H,
            intermediate_size=40,
            moe_intermediate_size=I_EXP,
            shared_expert_intermediate_size=20,
            num_hidden_layers=3,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[1],
            **COMMON,
        )
        return T.Qwen2MoeForCausalLM(cfg), 4, 2

    def olmoe() -> tuple[Any, int, int]:
        cfg = T.OlmoeConfig(
            hidden_size=H,
            intermediate_size=I_EXP,
            num_hidden_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            **COMMON,
        )
        return T.OlmoeForCausalLM(cfg), 4, 2

    def deepseek_v3() -> tuple[Any, int, int]:
        cfg = T.DeepseekV3Config(
            hidden_size=H,
            intermediate_size=40,
            moe_intermediate_size=I_EXP,
            num_hidden_layers=3,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_shared_experts=1,
            n_group=2,
            topk_group=1,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            **COMMON,
        )
        m = T.DeepseekV3ForCausalLM(cfg)
        with torch.no_grad():
            for layer in m.model.layers[1:]:
                layer.mlp.gate.e_score_correction_bias.copy_(torch.linspace(-0.01, 0.01, 8))
            m.model.layers[2].mlp.gate.e_score_correction_bias[5] = 0.5  # an expert pushed hard
        return m, 8, 2

    def gpt_oss() -> tuple[Any, int, int]:
        cfg = T.GptOssConfig(
            hidden_size=H,
            intermediate_size=I_EXP,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
            **COMMON,
        )
        return T.GptOssForCausalLM(cfg), 4, 2

    def granitemoe() -> tuple[Any, int, int]:
        cfg = T.GraniteMoeConfig(
            hidden_size=H,
            intermediate_size=I_EXP,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **COMMON,
        )
        return T.GraniteMoeForCausalLM(cfg), 4, 2

    def dbrx() -> tuple[Any, int, int]:
        cfg = T.DbrxConfig(
            d_model=H,
            n_heads=4,
            n_layers=2,
            vocab_size=64,
            max_seq_len=64,
            attn_config=dict(kv_n_heads=2),
            ffn_config=dict(ffn_hidden_size=I_EXP, moe_num_experts=4, moe_top_k=2),
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        )
        # transformers 5.24's DbrxAttention still reads attn_config.rope_theta
        object.__setattr__(cfg.attn_config, "rope_theta", 10000.0)
        return T.DbrxForCausalLM(cfg), 4, 2

    def switch() -> tuple[Any, int, int]:
        cfg = T.SwitchTransformersConfig(
            vocab_size=64,
            d_model=H,
            d_kv=8,
            d_ff=I_EXP,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            num_experts=4,
            num_sparse_encoder_layers=1,
            num_sparse_decoder_layers=1,
        )
        return T.SwitchTransformersForConditionalGeneration(cfg), 4, 1

    def jamba() -> tuple[Any, int, int]:
        cfg = T.JambaConfig(
            hidden_size=H,
            intermediate_size=I_EXP,
            num_hidden_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=4,
            mamba_expand=2,
            mamba_dt_rank=4,
            **COMMON,
        )
        return T.JambaForCausalLM(cfg), 4, 2

    def llama_dense() -> tuple[Any, int, int]:
        cfg = T.LlamaConfig(hidden_size=H, intermediate_size=40, num_hidden_layers=2, **COMMON)
        return T.LlamaForCausalLM(cfg), 0, 0

    return {
        "mixtral": mixtral,
        "qwen2_moe": qwen2_moe,
        "olmoe": olmoe,
        "deepseek_v3": deepseek_v3,
        "gpt_oss": gpt_oss,
        "granitemoe": granitemoe,
        "dbrx": dbrx,
        "switch": switch,
        "jamba": jamba,
        "llama_dense": llama_dense,
    }


FAMILIES = (
    "mixtral",
    "qwen2_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "granitemoe",
    "dbrx",
    "switch",
    "jamba",
)


class Factory:
    """Builds checkpoints on first use and caches them for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, Built] = {}
        self.makers = _models()

    def __call__(self, name: str) -> Built:
        if name not in self.cache:
            self.cache[name] = self._build(name)
        return self.cache[name]

    def _build(self, name: str) -> Built:
        torch.manual_seed(hash(name) % 1000)
        out = self.root / name
        base, _, variant = name.partition(":")
        model, e, k = self.makers[base]()
        if variant == "sharded":
            model.save_pretrained(out, max_shard_size="20KB")
        elif variant == "fused":
            # the in-memory (fused) names, as save_file(model.state_dict()) writes them
            out.mkdir(parents=True)
            model.config.to_json_file(out / "config.json")
            save_file(
                {n: t.contiguous() for n, t in model.state_dict().items()},
                str(out / "model.safetensors"),
                metadata={"format": "pt"},
            )
        elif variant == "dup":
            with torch.no_grad():
                self._plant_duplicate(base, model)
            model.save_pretrained(out)
        elif variant == "bf16":
            model = model.to(torch.bfloat16)
            model.save_pretrained(out)
        else:
            model.save_pretrained(out)
        return _ground_truth(model, e, k, out)

    @staticmethod
    def _plant_duplicate(base: str, model: Any) -> None:
        if base == "mixtral":
            ex = model.model.layers[1].mlp.experts  # fused in memory, per-expert on disk
            ex.gate_up_proj[3] = ex.gate_up_proj[1]
            ex.down_proj[3] = ex.down_proj[1]
            gate = model.model.layers[1].mlp.gate.weight
            gate[2] *= 0.01  # a router row far below the rest
        elif base == "gpt_oss":
            ex = model.model.layers[0].mlp.experts
            ex.gate_up_proj[2] = 3.0 * ex.gate_up_proj[0]  # a scaled copy: same direction
            ex.down_proj[2] = ex.down_proj[0]
        elif base == "granitemoe":
            ex = model.model.layers[0].block_sparse_moe.experts
            for j in (1, 2):
                ex.gate_up_proj[j] = ex.gate_up_proj[0]
                ex.down_proj[j] = ex.down_proj[0]
        else:  # pragma: no cover
            raise ValueError(base)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    return Factory(tmp_path_factory.mktemp("ckpts"))


# -- hand-built checkpoints -----------------------------------------------------------------------------


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def fp8_quantise(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block FP8 (e4m3) with a float32 scale-inverse per block, as DeepSeek-V3 ships."""
    out, inp = w.shape
    br, bc = block
    sr, sc = -(-out // br), -(-inp // bc)
    scale = torch.empty(sr, sc)
    q = torch.empty(out, inp, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * br : (i + 1) * br, j * bc : (j + 1) * bc]
            s = blk.abs().max().clamp_min(1e-12) / 448.0
            scale[i, j] = s
            q[i * br : (i + 1) * br, j * bc : (j + 1) * bc] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def mxfp4_quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise float [..., G*32] to MXFP4 blocks uint8 [..., G, 16] and scales uint8 [..., G]."""
    from moediag.checkpoint.dequant import MXFP4_LUT

    *lead, n = w.shape
    g = n // 32
    x = w.reshape(*lead, g, 32)
    amax = x.abs().amax(dim=-1).clamp_min(1e-12)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    scales = (exp + 127).to(torch.uint8)
    y = x / torch.exp2(exp).unsqueeze(-1)
    idx = (y.unsqueeze(-1) - MXFP4_LUT).abs().argmin(dim=-1)  # nearest code
    lo, hi = idx[..., 0::2], idx[..., 1::2]
    blocks = (lo | (hi << 4)).to(torch.uint8)
    return blocks, scales
