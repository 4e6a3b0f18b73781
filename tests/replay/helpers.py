"""Hand-built checkpoints and traces for replay tests: router weight = identity, so logits = router input."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from moediag.trace import build_metadata, write_trace


def identity_checkpoint(
    path: Path,
    num_experts: int,
    hidden: int | None = None,
    *,
    family: str = "mixtral",
    top_k: int = 1,
    selection_bias: torch.Tensor | None = None,
) -> Path:
    """A one-layer checkpoint whose router weight is eye(E, H): the logits are the first E input values."""
    e, h = num_experts, hidden or num_experts
    path.mkdir(parents=True, exist_ok=True)
    t: dict[str, torch.Tensor] = {}
    if family == "mixtral":
        cfg = dict(
            model_type="mixtral",
            architectures=["MixtralForCausalLM"],
            hidden_size=h,
            num_hidden_layers=1,
            num_local_experts=e,
            num_experts_per_tok=top_k,
            intermediate_size=2,
        )
        b = "model.layers.0.block_sparse_moe"
        names = (("w1", (2, h)), ("w3", (2, h)), ("w2", (h, 2)))
    else:
        cfg = dict(
            model_type="deepseek_v3",
            architectures=["DeepseekV3ForCausalLM"],
            hidden_size=h,
            num_hidden_layers=1,
            n_routed_experts=e,
            num_experts_per_tok=top_k,
            moe_intermediate_size=2,
            n_group=1,
            topk_group=1,
            scoring_func="sigmoid",
            norm_topk_prob=True,
            first_k_dense_replace=0,
            routed_scaling_factor=1.0,
        )
        b = "model.layers.0.mlp"
        names = (("gate_proj", (2, h)), ("up_proj", (2, h)), ("down_proj", (h, 2)))
        t[f"{b}.gate.e_score_correction_bias"] = (
            torch.zeros(e) if selection_bias is None else selection_bias.float()
        )
    t[f"{b}.gate.weight"] = torch.eye(e, h)
    for j in range(e):
        for p, shape in names:
            t[f"{b}.experts.{j}.{p}.weight"] = torch.zeros(*shape)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def input_trace(
    path: Path,
    x: torch.Tensor,
    *,
    top_k: int,
    score_function: str = "softmax",
    topk_ids: torch.Tensor | None = None,
    sequence_ids: torch.Tensor | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A one-layer trace (layer 0): ``router_input`` = x, recorded ``topk_ids`` (default: top-k of x)."""
    e = x.shape[1]
    ids = x.topk(top_k, dim=-1).indices if topk_ids is None else topk_ids
    tensors = {"layers.0.router_input": x.float(), "layers.0.topk_ids": ids.to(torch.int32)}
    if sequence_ids is not None:
        tensors["tokens.sequence_ids"] = sequence_ids.to(torch.int64)
    tensors.update(extra or {})
    meta = build_metadata(num_experts=e, top_k=top_k, score_function=score_function)
    return write_trace(path, tensors, meta)
