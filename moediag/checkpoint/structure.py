"""What a checkpoint's MoE structure is made of: :class:`Layout` (blocks, layer kinds, every tensor's role
and parameters), :class:`MoEBlock` (one MoE block of one layer) and :class:`ExpertMatrix` (one projection
of every expert of a block). Found by :func:`moediag.checkpoint.layouts.detect_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ExpertMatrix", "Layout", "MoEBlock"]


@dataclass
class ExpertMatrix:
    """One projection of every expert in a block (for similarity): per-expert tensors or one fused tensor.

    Expert ``e``'s values are ``names[e]`` whole (per-expert) or the ``e``-th of ``num_experts`` equal,
    contiguous spans of ``fused`` (any fused layout stores experts outermost in memory).
    ``quant`` is None (plain floats), ``"fp8"`` (``scales`` hold the block scale-inverse siblings),
    ``"mxfp4"`` (``fused``/``names`` are the ``_blocks`` and ``scales`` the ``_scales``) or
    ``"unsupported: <why>"``.
    """

    key: str
    role: str
    names: dict[int, str] | None = None
    fused: str | None = None
    scales: dict[int, str] | str | None = None
    quant: str | None = None


@dataclass
class MoEBlock:
    """One MoE block of one layer: its router, biases, experts and shared experts, by tensor name."""

    stack: str
    layer: int
    block: str
    kind: str  # "ffn" or "attention" (JetMoE's mixture of attention heads)
    mtp: bool
    num_experts: int
    router: str | None = None
    router_bias: str | None = None
    selection_bias: str | None = None
    layout: str = "per-expert"  # per-expert | fused | grouped
    expert_ids: list[int] = field(default_factory=list)
    expert_tensors: list[str] = field(default_factory=list)
    matrices: list[ExpertMatrix] = field(default_factory=list)
    shared_tensors: list[str] = field(default_factory=list)
    expert_params: int = 0  # all routed experts of this block, logical parameters
    shared_params: int = 0
    router_params: int = 0
    hidden_size: int | None = None
    expert_intermediate_size: int | None = None
    top_k: int | None = None
    shared_experts: int = 0

    @property
    def label(self) -> str:
        return f"{self.stack}.{self.layer}" if self.stack else str(self.layer)

    @property
    def params_per_expert(self) -> float:
        n = len(self.expert_ids) or self.num_experts
        return self.expert_params / n if n else 0.0


@dataclass
class Layout:
    """The structure of a checkpoint as found in its tensors."""

    blocks: list[MoEBlock]
    #: (stack, layer) -> "moe" | "dense" | "mtp"
    layers: dict[tuple[str, int], str]
    #: tensor name -> role: expert, shared, router, router_bias, selection_bias, quant_meta, embedding, other
    roles: dict[str, str]
    #: tensor name -> logical parameter count (0 for quantisation metadata and selection-bias buffers)
    params: dict[str, int]
    mtp_tensors: set[str]
    hidden_size: int | None
    family_hint: str | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def stacks(self) -> list[str]:
        return sorted({s for s, _ in self.layers})
