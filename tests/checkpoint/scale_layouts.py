"""Real-size checkpoint layouts as sparse files: headers exactly as released, data holes that cost no disk.

Used by the structure-scaling test (tests/checkpoint/test_scale.py) and by benchmarks/checkpoint_bench.py.

* :func:`deepseek_v3` -- DeepSeek-V3 / R1 as released: 61 layers (3 dense, 58 MoE of 256 routed experts
  plus one shared), MLA attention, F8_E4M3 weights with F32 ``weight_scale_inv`` [ceil(out/128),
  ceil(in/128)] siblings, bf16 router and norms, F32 ``e_score_correction_bias``, the MTP layer 61 with
  ``enorm``/``hnorm``/``eh_proj``/``shared_head``; 163 shards and ``model.safetensors.index.json``.
* :func:`gpt_oss_120b` -- GPT-OSS-120B as released: 36 layers of 128 experts, MXFP4 ``_blocks``/``_scales``
  (U8), bf16 expert biases, router weight and bias, attention sinks; 15 shards.

Files are written with a real header and ``truncate`` to the full size, so reading the data gives zeros.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

Spec = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape

_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I64": 8}


def write_sparse(path: Path, specs: list[Spec], metadata: dict[str, str] | None = None) -> int:
    """A safetensors file holding ``specs`` whose data is a hole (zeros). Returns its logical size."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    pos = 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * _SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + pos)
    return 8 + len(raw) + pos


def write_checkpoint(folder: Path, shards: list[list[Spec]], config: dict[str, Any]) -> dict[str, int]:
    """Sparse shards ``model-0000i-of-0000N.safetensors``, their index and ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    size = 0
    for i, specs in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        size += write_sparse(folder / fname, specs)
        weight_map.update(dict.fromkeys((n for n, _, _ in specs), fname))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return {"tensors": len(weight_map), "bytes": size, "shards": len(shards)}


def _split(specs: list[Spec], shards: int) -> list[list[Spec]]:
    per = -(-len(specs) // shards)
    return [specs[i : i + per] for i in range(0, len(specs), per)]


def _fp8(name: str, out: int, inp: int, block: int = 128) -> list[Spec]:
    return [
        (name, "F8_E4M3", (out, inp)),
        (name + "_scale_inv", "F32", (math.ceil(out / block), math.ceil(inp / block))),
    ]


DEEPSEEK_V3_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "vocab_size": 129280,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
}


def deepseek_v3_layer(L: int, *, experts: int = 256, dense: bool = False, mtp: bool = False) -> list[Spec]:
    """Every tensor of DeepSeek-V3's layer ``L`` as released (names, dtypes, shapes)."""
    H, F, V = 7168, 2048, 129280
    p = f"model.layers.{L}."
    out: list[Spec] = [
        (p + "input_layernorm.weight", "BF16", (H,)),
        (p + "post_attention_layernorm.weight", "BF16", (H,)),
        *_fp8(p + "self_attn.q_a_proj.weight", 1536, H),
        (p + "self_attn.q_a_layernorm.weight", "BF16", (1536,)),
        *_fp8(p + "self_attn.q_b_proj.weight", 128 * 192, 1536),
        *_fp8(p + "self_attn.kv_a_proj_with_mqa.weight", 576, H),
        (p + "self_attn.kv_a_layernorm.weight", "BF16", (512,)),
        *_fp8(p + "self_attn.kv_b_proj.weight", 128 * 256, 512),
        *_fp8(p + "self_attn.o_proj.weight", H, 128 * 128),
    ]
    if dense:
        for proj, o, i in (("gate_proj", 18432, H), ("up_proj", 18432, H), ("down_proj", H, 18432)):
            out += _fp8(p + f"mlp.{proj}.weight", o, i)
    else:
        out += [
            (p + "mlp.gate.weight", "BF16", (experts, H)),
            (p + "mlp.gate.e_score_correction_bias", "F32", (experts,)),
        ]
        for j in range(experts):
            for proj, o, i in (("gate_proj", F, H), ("up_proj", F, H), ("down_proj", H, F)):
                out += _fp8(p + f"mlp.experts.{j}.{proj}.weight", o, i)
        for proj, o, i in (("gate_proj", F, H), ("up_proj", F, H), ("down_proj", H, F)):
            out += _fp8(p + f"mlp.shared_experts.{proj}.weight", o, i)
    if mtp:
        out += [
            (p + "embed_tokens.weight", "BF16", (V, H)),
            (p + "enorm.weight", "BF16", (H,)),
            (p + "hnorm.weight", "BF16", (H,)),
            (p + "eh_proj.weight", "BF16", (H, 2 * H)),
            (p + "shared_head.norm.weight", "BF16", (H,)),
            (p + "shared_head.head.weight", "BF16", (V, H)),
        ]
    return out


def deepseek_v3(
    folder: Path, *, layers: int = 61, experts: int = 256, mtp: bool = True, shards: int = 163
) -> dict[str, int]:
    """DeepSeek-V3's released layout (defaults: the real model, 91,991 tensors, ~688 GB sparse)."""
    H, V = 7168, 129280
    first_dense = min(3, layers)
    specs: list[Spec] = [("model.embed_tokens.weight", "BF16", (V, H))]
    for layer in range(layers):
        specs += deepseek_v3_layer(layer, experts=experts, dense=layer < first_dense)
    if mtp:
        specs += deepseek_v3_layer(layers, experts=experts, mtp=True)
    specs += [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]
    cfg = dict(DEEPSEEK_V3_CONFIG, num_hidden_layers=layers, n_routed_experts=experts)
    cfg["num_nextn_predict_layers"] = 1 if mtp else 0
    return write_checkpoint(folder, _split(specs, shards), cfg)


GPT_OSS_120B_CONFIG: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "num_hidden_layers": 36,
    "num_local_experts": 128,
    "num_experts_per_tok": 4,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "quantization_config": {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    },
}


def gpt_oss_layer(L: int, *, experts: int = 128) -> list[Spec]:
    """Every tensor of GPT-OSS-120B's layer ``L`` as released (MXFP4 experts)."""
    H, F, D = 2880, 2880, 64
    p = f"model.layers.{L}."
    return [
        (p + "input_layernorm.weight", "BF16", (H,)),
        (p + "post_attention_layernorm.weight", "BF16", (H,)),
        (p + "self_attn.q_proj.weight", "BF16", (64 * D, H)),
        (p + "self_attn.q_proj.bias", "BF16", (64 * D,)),
        (p + "self_attn.k_proj.weight", "BF16", (8 * D, H)),
        (p + "self_attn.k_proj.bias", "BF16", (8 * D,)),
        (p + "self_attn.v_proj.weight", "BF16", (8 * D, H)),
        (p + "self_attn.v_proj.bias", "BF16", (8 * D,)),
        (p + "self_attn.o_proj.weight", "BF16", (H, 64 * D)),
        (p + "self_attn.o_proj.bias", "BF16", (H,)),
        (p + "self_attn.sinks", "BF16", (64,)),
        (p + "mlp.router.weight", "BF16", (experts, H)),
        (p + "mlp.router.bias", "BF16", (experts,)),
        (p + "mlp.experts.gate_up_proj_blocks", "U8", (experts, 2 * F, H // 32, 16)),
        (p + "mlp.experts.gate_up_proj_scales", "U8", (experts, 2 * F, H // 32)),
        (p + "mlp.experts.gate_up_proj_bias", "BF16", (experts, 2 * F)),
        (p + "mlp.experts.down_proj_blocks", "U8", (experts, H, F // 32, 16)),
        (p + "mlp.experts.down_proj_scales", "U8", (experts, H, F // 32)),
        (p + "mlp.experts.down_proj_bias", "BF16", (experts, H)),
    ]


def gpt_oss_120b(folder: Path, *, layers: int = 36, experts: int = 128, shards: int = 15) -> dict[str, int]:
    """GPT-OSS-120B's released layout (defaults: the real model, ~65 GB sparse)."""
    H, V = 2880, 201088
    specs: list[Spec] = [("model.embed_tokens.weight", "BF16", (V, H))]
    for L in range(layers):
        specs += gpt_oss_layer(L, experts=experts)
    specs += [("model.norm.weight", "BF16", (H,)), ("lm_head.weight", "BF16", (V, H))]
    cfg = dict(GPT_OSS_120B_CONFIG, num_hidden_layers=layers, num_local_experts=experts)
    cfg["layer_types"] = ["sliding_attention" if L % 2 == 0 else "full_attention" for L in range(layers)]
    return write_checkpoint(folder, _split(specs, shards), cfg)


def write_random(path: Path, specs: list[Spec], seed: int = 0) -> int:
    """Like :func:`write_sparse` but with random data, written 64 MiB at a time (bounded memory): FP8
    codes uniform over every non-NaN byte, F32 scales in [1e-4, 1e-3], BF16 standard normal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    size = write_sparse(path, specs)
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        for _name, dtype, shape in specs:
            count = math.prod(shape)
            for a in range(0, count, 1 << 26):
                k = min(count, a + (1 << 26)) - a
                if dtype.startswith("F8"):
                    t = np.frombuffer(rng.bytes(k), dtype=np.uint8).copy()
                    t[(t & 0x7F) == 0x7F] -= 1  # no NaN codes (S.1111.111 in E4M3)
                elif dtype == "F32":
                    t = (rng.random(k, dtype=np.float32) * 9e-4 + 1e-4).astype(np.float32)
                else:  # bf16: the top half of float32 normals
                    t = (rng.standard_normal(k, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
                fh.write(t.tobytes())
    return size


def deepseek_v3_moe_layer(folder: Path, *, experts: int = 256, seed: int = 0) -> dict[str, int]:
    """One real-size DeepSeek-V3 MoE layer (layer 3: router, bias, ``experts`` FP8 experts with their
    scales, shared expert) with random data: 11.3 GB for 256 experts. The config is the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [s for s in deepseek_v3_layer(3, experts=experts) if ".mlp." in s[0]]
    size = write_random(folder / "model-00001-of-00001.safetensors", specs, seed)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": size},
                "weight_map": dict.fromkeys((n for n, _, _ in specs), "model-00001-of-00001.safetensors"),
            }
        )
    )
    cfg = dict(DEEPSEEK_V3_CONFIG, num_hidden_layers=4, n_routed_experts=experts, num_nextn_predict_layers=0)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return {"tensors": len(specs), "bytes": size, "shards": 1}
