"""The formats ``moediag import`` understands, and the importer behind each (an exhaustive mapping)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

from moediag.importers.base import ImportOptions, ImportResult
from moediag.importers.hf import import_hf
from moediag.importers.megatron import import_megatron
from moediag.importers.sglang import import_sglang
from moediag.importers.trtllm import import_trtllm
from moediag.importers.vllm import import_vllm

Importer = Callable[[list[Path], Path, ImportOptions], ImportResult]


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


IMPORTERS: dict[ImportFormat, Importer] = {
    ImportFormat.HF: import_hf,
    ImportFormat.SGLANG: import_sglang,
    ImportFormat.MEGATRON: import_megatron,
    ImportFormat.TRTLLM: import_trtllm,
    ImportFormat.VLLM: import_vllm,
}

DESCRIPTIONS: dict[ImportFormat, str] = {
    ImportFormat.HF: "transformers router logits saved with torch.save (tuple/list per MoE layer)",
    ImportFormat.SGLANG: "SGLang expert distribution recorder (stat, per_pass, per_token) or legacy CSV",
    ImportFormat.MEGATRON: "Megatron-Core router trace JSONL (+ sidecars) or tokens-per-expert JSONL",
    ImportFormat.TRTLLM: "TensorRT-LLM expert statistics folder (meta_info.json + rank*.safetensors)",
    ImportFormat.VLLM: "vLLM routed experts [tokens, layers, top_k] (.npy/.npz/.pt/.json/.jsonl)",
}

if set(IMPORTERS) != set(ImportFormat) or set(DESCRIPTIONS) != set(ImportFormat):  # pragma: no cover
    raise RuntimeError("every ImportFormat needs an importer and a description")
