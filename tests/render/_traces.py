"""Small synthetic traces for the renderer tests, written with moediag's own writer."""

from __future__ import annotations

from pathlib import Path

import torch

from moediag.trace import build_metadata, write_trace


def report_trace(
    path: Path,
    *,
    layers: int = 3,
    experts: int = 8,
    top_k: int = 2,
    tokens: int = 1200,
    steps: bool = True,
    correct: bool = True,
    logits: bool = True,
    seed: int = 0,
) -> Path:
    """Layers get more skewed with depth; the last layer has a dead expert (0); optional steps/correctness."""
    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        skew = torch.linspace(0, 2.5 * layer / max(1, layers - 1), experts)
        z = torch.randn(tokens, experts, generator=g) + skew
        if layer == layers - 1:
            z[:, 0] = -30.0
        if logits:
            t[f"layers.{layer}.router_logits"] = z
        else:
            t[f"layers.{layer}.topk_ids"] = z.topk(top_k, dim=-1).indices.to(torch.int32)
    t["tokens.sequence_ids"] = torch.arange(tokens) // 200
    if steps:
        t["tokens.step"] = torch.arange(tokens) * 4 // tokens
    if correct:
        t["tokens.correct"] = torch.rand(tokens, generator=g) < 0.7
    meta = build_metadata(num_experts=experts, top_k=top_k, score_function="softmax", model="synthetic")
    return write_trace(path, t, meta)
