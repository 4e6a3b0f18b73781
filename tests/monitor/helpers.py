"""Tiny Mixtral-style models and batches for the monitor tests (built from config classes, no downloads)."""

from __future__ import annotations

import os
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 128


def tiny_mixtral(seed: int = 0, *, layers: int = 2, experts: int = 8, top_k: int = 2) -> Any:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        router_aux_loss_coef=0.0,
    )
    model = transformers.MixtralForCausalLM(cfg)
    model.train()
    return model


def batch(seed: int, *, b: int = 4, s: int = 16, pad: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    if pad:
        for row in range(b):
            cut = int(torch.randint(s // 2, s + 1, (1,), generator=g))
            mask[row, cut:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def collapse(model: Any, layer: int, expert: int = 0, strength: float = 50.0) -> Any:
    """Bias one layer's router logits so that ``expert`` is chosen by every token (a collapsed router).

    A forward hook adds ``strength`` to the expert's logit and routes again as Mixtral does (softmax,
    top-k, renormalised weights), so the model runs on the collapsed choice. Register it before a
    monitor: later hooks see this output. Returns the hook handle."""
    gate = model.model.layers[layer].mlp.gate

    def hook(module: Any, args: Any, output: Any) -> Any:
        logits = output[0].clone()
        logits[:, expert] += strength
        probs = torch.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, module.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), idx

    return gate.register_forward_hook(hook)
