"""Per-layer router descriptions: what ``replay`` needs to recompute routing from a checkpoint.

>>> from moediag.checkpoint import router_specs, load_router_weight
>>> specs = router_specs("path/to/checkpoint")                       # doctest: +SKIP
>>> w = load_router_weight("path/to/checkpoint", specs[0])   # float32 [E, H]  # doctest: +SKIP

Each :class:`RouterSpec` names the router weight, the optional logit bias (added to the logits, as
GPT-OSS's ``router.bias``) and the optional selection bias (added to the scores for choosing only, as
DeepSeek-V3's ``e_score_correction_bias``), and carries the normalised routing settings that
:func:`moediag.routing.route` takes (a RouterSpec is a ``RoutingRule``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from moediag.checkpoint.config import NormalisedConfig, normalise_config
from moediag.checkpoint.inventory import Inventory, open_inventory
from moediag.checkpoint.layouts import Layout, MoEBlock, detect_layout
from moediag.checkpoint.reading import load_tensor_f32
from moediag.errors import UnsupportedLayoutError
from moediag.routing import group_score_from_config

__all__ = [
    "RouterSpec",
    "load_router_bias",
    "load_router_weight",
    "load_selection_bias",
    "router_specs",
    "specs_from_layout",
    "top_k_for",
]


@dataclass(frozen=True)
class RouterSpec:
    """How one MoE layer routes. ``top_k`` is None when neither config nor family table gives it."""

    stack: str
    layer: int
    block: str
    kind: str  # "ffn" or "attention"
    mtp: bool
    weight: str
    logit_bias: str | None
    selection_bias: str | None
    num_experts: int
    hidden_size: int | None
    top_k: int | None
    score_function: str
    norm_topk_prob: bool | None
    n_group: int | None
    topk_group: int | None
    routed_scaling_factor: float | None
    #: how a group is scored (moediag.routing.GROUP_SCORES); None without group limits
    group_score: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_k_for(cfg: NormalisedConfig, block: MoEBlock) -> int | None:
    k = cfg.top_k_for(block.layer)
    if k is None:
        return None
    return min(int(k), block.num_experts)


def specs_from_layout(layout: Layout, cfg: NormalisedConfig) -> list[RouterSpec]:
    """One spec per MoE block that has a router (MTP layers included, flagged ``mtp``)."""
    out = []
    for b in layout.blocks:
        if b.router is None:
            continue
        score = cfg.score_function or ("sigmoid" if b.selection_bias else "softmax")
        out.append(
            RouterSpec(
                stack=b.stack,
                layer=b.layer,
                block=b.block,
                kind=b.kind,
                mtp=b.mtp,
                weight=b.router,
                logit_bias=b.router_bias,
                selection_bias=b.selection_bias,
                num_experts=b.num_experts,
                hidden_size=b.hidden_size,
                top_k=top_k_for(cfg, b),
                score_function=score,
                norm_topk_prob=cfg.norm_topk_prob,
                n_group=cfg.n_group if cfg.n_group and cfg.n_group > 1 else None,
                topk_group=cfg.topk_group if cfg.n_group and cfg.n_group > 1 else None,
                routed_scaling_factor=cfg.routed_scaling_factor,
                group_score=(
                    cfg.group_score or group_score_from_config(None, score)
                    if cfg.n_group and cfg.n_group > 1
                    else None
                ),
            )
        )
    return out


def _inventory(source: Inventory | str | os.PathLike[str]) -> Inventory:
    return source if isinstance(source, Inventory) else open_inventory(source)


def router_specs(source: Inventory | str | os.PathLike[str]) -> list[RouterSpec]:
    """Router descriptions of every MoE layer of a checkpoint (headers only)."""
    inv = _inventory(source)
    cfg = normalise_config(inv.config)
    layout = detect_layout(inv, cfg)
    specs = specs_from_layout(layout, cfg)
    if not specs:
        raise UnsupportedLayoutError("no MoE router found in this checkpoint", inv.path)
    return specs


def load_router_weight(source: Inventory | str | os.PathLike[str], spec: RouterSpec) -> torch.Tensor:
    """The router weight of one layer as float32 [E, H] (FP8 dequantised when it has a scale)."""
    return load_tensor_f32(_inventory(source), spec.weight)


def load_router_bias(source: Inventory | str | os.PathLike[str], spec: RouterSpec) -> torch.Tensor | None:
    """The logit bias [E] (float32), or None."""
    if spec.logit_bias is None:
        return None
    return load_tensor_f32(_inventory(source), spec.logit_bias).reshape(-1)


def load_selection_bias(source: Inventory | str | os.PathLike[str], spec: RouterSpec) -> torch.Tensor | None:
    """The selection-only bias [E] (float32; ERNIE's [1, E] squeezed), or None."""
    if spec.selection_bias is None:
        return None
    return load_tensor_f32(_inventory(source), spec.selection_bias).reshape(-1)
