"""One layer's replay: the router on the device, and :class:`LayerReplay`, the layer's mergeable
agreement and what-if counts (declared state, :mod:`moediag.stats.state`).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field

import torch

from moediag.checkpoint import (
    RouterSpec,
)
from moediag.replay.settings import MARGIN_EDGES


@dataclass
class LayerRouter:
    """One layer's router, ready on the device."""

    layer: int
    spec: RouterSpec
    weight: torch.Tensor  # [E, H] in the compute dtype, on the device
    logit_bias: torch.Tensor | None  # [E] float32
    selection_bias: torch.Tensor | None  # [E] float32, the checkpoint's
    whatif_bias: torch.Tensor | None  # [E] float32, the what-if's (= selection_bias unless changed)
    top_k: int  # the routing the model did (trace top_k, else the checkpoint's)
    whatif_top_k: int
    recorded_bias: torch.Tensor | None  # trace's layers.L.selection_bias, to route recorded logits

    @property
    def num_experts(self) -> int:
        return int(self.weight.shape[0])


_SETTING = {"reduce": None}  # a field that is the same on both sides of a merge


@dataclass
class LayerReplay:
    """Sufficient statistics of one replayed layer (sums and counts; ``merge`` combines every field by
    its declared reduction -- sum unless the field's metadata says otherwise -- so none can be left out)."""

    layer: int = field(metadata=_SETTING)
    num_experts: int = field(metadata=_SETTING)
    top_k: int = field(metadata=_SETTING)
    whatif_top_k: int = field(metadata=_SETTING)
    tokens: int = 0
    compared: int = 0
    top1_hits: int = 0
    topk_hits: int = 0
    overlap_sum: int = 0
    mismatched_near_ties: int = 0
    logits_compared: int = 0
    logits_max_abs_diff: float = field(default=0.0, metadata={"reduce": max})
    excluded_nonfinite: int = 0
    whatif_changed: int = 0
    whatif_overlap_sum: int = 0
    load_before: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    load_after: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    noise_tokens: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(MARGIN_EDGES), dtype=torch.int64)
    )
    noise_flips: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(MARGIN_EDGES), dtype=torch.int64)
    )
    hidden_size: int = field(default=0, metadata=_SETTING)
    #: with --ep-size: sum over tokens of the distinct EP ranks (contiguous placement) their experts are on
    rank_hits: int = 0

    def __post_init__(self) -> None:
        if self.load_before.numel() == 0:
            self.load_before = torch.zeros(self.num_experts, dtype=torch.int64)
        if self.load_after.numel() == 0:
            self.load_after = torch.zeros(self.num_experts, dtype=torch.int64)

    def merge(self, other: LayerReplay) -> None:
        for f in dataclasses.fields(self):
            reduce = f.metadata.get("reduce", operator.add)
            if reduce is not None:
                setattr(self, f.name, reduce(getattr(self, f.name), getattr(other, f.name)))


def ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def membership(ids: torch.Tensor, e: int) -> torch.Tensor:
    """Boolean [n, E]: expert in the token's top-k (-1 slots ignored)."""
    m = torch.zeros(ids.shape[0], e, dtype=torch.bool, device=ids.device)
    m.scatter_(1, ids.clamp_min(0), ids >= 0)
    return m


def expert_counts(ids: torch.Tensor, e: int) -> torch.Tensor:
    flat = ids.reshape(-1)
    flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=e).to("cpu", torch.int64)


# -- the run -----------------------------------------------------------------------------------------
