"""The formats ``moediag import`` understands (no heavy imports: the CLI builds its help from this)."""

from __future__ import annotations

import enum


class ImportFormat(str, enum.Enum):
    """A foreign routing-dump format (the FORMAT argument of ``moediag import``)."""

    HF = "hf"
    SGLANG = "sglang"
    MEGATRON = "megatron"
    TRTLLM = "trtllm"
    VLLM = "vllm"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]


DESCRIPTIONS: dict[ImportFormat, str] = {
    ImportFormat.HF: "transformers router logits saved with torch.save (tuple/list per MoE layer)",
    ImportFormat.SGLANG: "SGLang expert distribution recorder (stat, per_pass, per_token) or legacy CSV",
    ImportFormat.MEGATRON: "Megatron-Core router trace JSONL (+ sidecars) or tokens-per-expert JSONL",
    ImportFormat.TRTLLM: "TensorRT-LLM expert statistics folder (meta_info.json + rank*.safetensors)",
    ImportFormat.VLLM: "vLLM routed experts [tokens, layers, top_k] (.npy/.npz/.pt/.json/.jsonl)",
}
