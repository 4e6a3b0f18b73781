"""Total, active and dense-equivalent parameter counts, from tensor shapes alone.

* ``total``: every parameter in the checkpoint except multi-token-prediction (MTP) layers, which are
  reported apart as ``mtp``. Quantisation metadata (``weight_scale_inv``, ``_scales``, ``qzeros`` ...)
  and selection-bias buffers (``e_score_correction_bias``) hold no parameters; packed MXFP4 ``_blocks``
  count two parameters a byte.
* ``active`` per token: ``total - sum over MoE blocks of (E - k) * P_expert``, where ``P_expert`` is one
  routed expert's parameters (all its projections and biases). Everything else (attention, norms,
  embeddings, routers, shared experts, dense layers) is always active.
* dense-equivalent: a dense model with the same compute per token has ``active - input embeddings``
  parameters (an embedding lookup is not a matmul; with tied embeddings the matrix is also the output
  head, so it stays); one with the same capacity has ``total``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from moediag.checkpoint.layouts import Layout

__all__ = ["ParamCounts", "count_params"]

_HEAD_RE = re.compile(r"(?:^|\.)(?:lm_head|output|embed_out|head)\.weight$")


@dataclass
class ParamCounts:
    total: int
    active: int | None
    expert: int
    shared: int
    router: int
    embedding: int
    mtp: int
    #: (stack, layer, block) -> experts counted active (top-k) where known
    top_k_used: dict[str, int] = field(default_factory=dict)
    tied_embeddings: bool = False

    @property
    def non_expert(self) -> int:
        return self.total - self.expert

    @property
    def expert_share(self) -> float | None:
        return self.expert / self.total if self.total else None

    @property
    def active_share(self) -> float | None:
        return self.active / self.total if self.active is not None and self.total else None

    @property
    def compute_params(self) -> int | None:
        if self.active is None:
            return None
        return self.active - (0 if self.tied_embeddings else self.embedding)

    def dense_equivalent(self) -> dict[str, Any]:
        c = self.compute_params
        return {
            "compute_params": c,
            "capacity_params": self.total,
            "flops_per_token": None if c is None else 2 * c,
            "total_over_active": (self.total / self.active) if self.active else None,
        }


def count_params(layout: Layout, top_k: dict[str, int | None]) -> ParamCounts:
    """Counts for ``layout``; ``top_k`` maps each block's key (:func:`block_key`) to its k (None: unknown)."""
    p = layout.params
    mtp = sum(p[n] for n in layout.mtp_tensors)
    total = sum(v for n, v in p.items() if n not in layout.mtp_tensors)
    expert = shared = router = 0
    inactive = 0
    known = True
    used: dict[str, int] = {}
    for b in layout.blocks:
        if b.mtp:
            continue
        expert += b.expert_params
        shared += b.shared_params
        router += b.router_params
        k = top_k.get(block_key(b.stack, b.layer, b.block))
        if k is None:
            known = False
            continue
        n = len(b.expert_ids) or b.num_experts
        used[block_key(b.stack, b.layer, b.block)] = k
        inactive += round(max(n - k, 0) * b.params_per_expert)
    embedding = sum(
        p[n] for n, role in layout.roles.items() if role == "embedding" and n not in layout.mtp_tensors
    )
    has_head = any(_HEAD_RE.search(n) for n in layout.params if n not in layout.mtp_tensors)
    return ParamCounts(
        total=total,
        active=(total - inactive) if known else None,
        expert=expert,
        shared=shared,
        router=router,
        embedding=embedding,
        mtp=mtp,
        top_k_used=used,
        tied_embeddings=not has_head,
    )


def block_key(stack: str, layer: int, block: str) -> str:
    """A stable string key for one MoE block."""
    return f"{stack}|{layer}|{block}"
