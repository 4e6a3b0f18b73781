"""Compute accounting of a checkpoint: parameters, FLOPs a token, weight bytes, from headers and config.

The rule (docs/compare.md, "How FLOPs are counted"), for one token in a sequence of ``seq_len`` tokens,
forward pass, multiply and add counted as two FLOPs:

* **matmuls of the active path**: 2 FLOPs per parameter of every weight matrix the token goes through.
  A weight matrix is a tensor with two or more dimensions that is not a bias, a selection bias,
  quantisation metadata, an input-embedding lookup (with tied embeddings the matrix is also the output
  head, so it counts once), a position-embedding or relative-bias table, or a depthwise convolution.
  In an MoE block only ``k`` of the ``E`` routed experts are on the path: ``k / E`` of the routed
  experts' matrices count; the router, shared experts, dense layers and attention projections count in
  full. Multi-token-prediction (MTP) layers are left out (reported apart, as the parameter counts do).
* **attention**: per attention module, ``2 * heads * (d_qk + d_v) * context`` (the score row QK^T and
  the weighted sum of values), ``context = seq_len`` (``min(seq_len, window)`` on sliding-window layers).
  The whole row is counted, as Kaplan et al. and Chinchilla do and as an eager attention's matmuls are;
  causal kernels that skip masked blocks do about half.

Norms, activations, softmax and rotary embeddings are elementwise and not counted. ``weight_bytes`` is
the bytes of every tensor as stored (quantised weights at their stored size, scales included).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moediag.checkpoint.analysis import CheckpointAnalysis
    from moediag.checkpoint.layouts import MoEBlock

__all__ = [
    "DEFAULT_SEQ_LEN",
    "ModelCompute",
    "block_bytes",
    "model_compute",
    "serving_cost",
    "trace_serving_cost",
    "uniform_touched",
]

DEFAULT_SEQ_LEN = 2048

_SKIP_ROLES = frozenset({"quant_meta", "selection_bias", "router_bias"})
_NOT_MATMUL = re.compile(
    r"(?:^|\.)(?:wpe|embed_positions|position_embeddings|pos_emb|relative_attention_bias|conv1d|conv)"
    r"(?:\.|$)"
)
_ATTN_MODULE = re.compile(
    r"^(?P<mod>(?:.*?\.)?(?:self_attn|self_attention|attention|attn|cross_attn|encoder_attn|"
    r"SelfAttention|EncDecAttention|mixer\.self_attn))\."
)
_HEAD_KEYS = ("num_attention_heads", "n_heads", "num_heads", "n_head", "encoder_attention_heads")


def _is_bias(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias") or last.startswith("bias")


def uniform_touched(num_experts: int, top_k: int, batch: int) -> float:
    """Expected share of ``num_experts`` experts that ``batch`` tokens, each routed uniformly at random to
    ``top_k`` distinct experts independently, touch: ``1 - (1 - k/E)^B``."""
    return 1.0 - (1.0 - top_k / num_experts) ** batch


@dataclass
class ModelCompute:
    """What one checkpoint costs: the figures of ``compare DENSE SPARSE`` and of serving cost."""

    path: str
    moe: bool
    total_params: int
    active_params: int | None
    #: parameters of the weight matrices on one token's path (what the 2-FLOPs-a-parameter rule counts)
    matmul_params: int | None
    attention_flops_per_token: int | None
    seq_len: int
    weight_bytes: int
    #: bytes every decode step reads whatever the routing: non-expert matrices and vectors, excluding the
    #: input-embedding table (a step reads only B of its rows) and MTP layers
    always_read_bytes: int
    #: (layer, num_experts, top_k, bytes of all routed experts of the block) per MoE block, MTP excluded
    expert_blocks: list[tuple[int, int, int | None, int]]
    mtp_params: int
    family: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def flops_per_token(self) -> int | None:
        if self.matmul_params is None or self.attention_flops_per_token is None:
            return None
        return 2 * self.matmul_params + self.attention_flops_per_token

    @property
    def bytes_per_param(self) -> float | None:
        stored = self.total_params + self.mtp_params
        return self.weight_bytes / stored if stored else None

    @property
    def expert_weight_bytes(self) -> int:
        return sum(b for *_, b in self.expert_blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "moe": self.moe,
            "family": self.family,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "matmul_params": self.matmul_params,
            "flops_per_token": self.flops_per_token,
            "attention_flops_per_token": self.attention_flops_per_token,
            "seq_len": self.seq_len,
            "weight_bytes": self.weight_bytes,
            "expert_weight_bytes": self.expert_weight_bytes,
            "mtp_params": self.mtp_params,
            "notes": list(self.notes),
        }


def block_bytes(analysis: CheckpointAnalysis, block: MoEBlock) -> int:
    """Bytes of a block's routed experts as stored (quantisation scales of those tensors included)."""
    inv = analysis.inventory
    names = set(block.expert_tensors)
    owners = _quant_owners(analysis)
    return sum(inv[n].info.nbytes for n in inv.tensors if n in names or owners.get(n) in names)


def _quant_owners(analysis: CheckpointAnalysis) -> dict[str, str]:
    from moediag.checkpoint.tensor_names import qmeta_owner

    tensors = analysis.inventory.tensors
    out: dict[str, str] = {}
    for name, role in analysis.layout.roles.items():
        if role == "quant_meta":
            owner = qmeta_owner(name, tensors)
            if owner is not None:
                out[name] = owner
    return out


def _attention(analysis: CheckpointAnalysis, seq_len: int, notes: list[str]) -> int | None:
    """Attention FLOPs a token (the score row and the weighted sum), summed over attention modules."""
    layout = analysis.layout
    cfg = analysis.config
    modules: dict[tuple[str, int], set[str]] = {}
    from moediag.checkpoint.layouts import split_layer

    for name in analysis.inventory.tensors:
        if name in layout.mtp_tensors:
            continue
        sp = split_layer(name)
        if sp is None:
            continue
        stack, layer, rest = sp
        m = _ATTN_MODULE.match(rest)
        if m and not any(k in rest for k in ("norm.", "layernorm")):
            modules.setdefault((stack, layer), set()).add(m.group("mod"))
    if not modules:
        return 0
    heads, _ = cfg.get(*_HEAD_KEYS)
    if not isinstance(heads, int) or heads <= 0:
        notes.append("attention not counted: the config gives no number of attention heads")
        return None
    nope, _ = cfg.get("qk_nope_head_dim")
    rope, _ = cfg.get("qk_rope_head_dim")
    v_dim, _ = cfg.get("v_head_dim")
    head_dim, _ = cfg.get("head_dim", "d_kv")
    if isinstance(nope, int) and isinstance(rope, int) and isinstance(v_dim, int):  # MLA (DeepSeek-V2/V3)
        d_qk, d_v = nope + rope, v_dim
    else:
        if not isinstance(head_dim, int):
            if not cfg.hidden_size:
                notes.append("attention not counted: the config gives neither head_dim nor hidden_size")
                return None
            head_dim = cfg.hidden_size // heads
        d_qk = d_v = head_dim
    window, _ = cfg.get("sliding_window")
    use_window, _ = cfg.get("use_sliding_window")
    layer_types, _ = cfg.get("layer_types")
    total = 0
    windowed = 0
    for (_stack, layer), mods in modules.items():
        context = seq_len
        if isinstance(window, int) and window > 0:
            if isinstance(layer_types, list) and 0 <= layer < len(layer_types):
                sliding = "sliding" in str(layer_types[layer])
            else:
                sliding = use_window is not False
            if sliding and window < seq_len:
                context = window
                windowed += 1
        total += len(mods) * 2 * heads * (d_qk + d_v) * context
    if windowed:
        notes.append(f"{windowed} attention layer(s) use a sliding window of {window} tokens")
    return total


def model_compute(
    path: str | os.PathLike[str] | CheckpointAnalysis, *, seq_len: int = DEFAULT_SEQ_LEN
) -> ModelCompute:
    """Parameters, FLOPs a token at ``seq_len`` and weight bytes of one checkpoint (headers only)."""
    from moediag.checkpoint.analysis import CheckpointAnalysis, analyze_checkpoint
    from moediag.checkpoint.params import block_key
    from moediag.errors import UsageError

    if seq_len < 1:
        raise UsageError(f"--seq-len must be positive (got {seq_len})")
    analysis = path if isinstance(path, CheckpointAnalysis) else analyze_checkpoint(path, weights=False)
    layout, inv, params = analysis.layout, analysis.inventory, analysis.params
    notes: list[str] = []
    owners = _quant_owners(analysis)
    expert_names = {n for b in layout.blocks for n in b.expert_tensors}

    def is_matrix(name: str) -> bool:
        role = layout.roles.get(name)
        if role in _SKIP_ROLES or name in layout.mtp_tensors or _is_bias(name) or _NOT_MATMUL.search(name):
            return False
        if role == "embedding" and not params.tied_embeddings:
            return False
        return len(inv[name].shape) >= 2

    matmul = sum(layout.params[n] for n in inv.tensors if is_matrix(n))
    known = True
    blocks: list[tuple[int, int, int | None, int]] = []
    for b in layout.blocks:
        if b.mtp:
            continue
        k = params.top_k_used.get(block_key(b.stack, b.layer, b.block))
        n = len(b.expert_ids) or b.num_experts
        blocks.append((b.layer, n, k, block_bytes(analysis, b)))
        if k is None:
            known = False
            continue
        routed = sum(layout.params[x] for x in b.expert_tensors if is_matrix(x))
        matmul -= round(routed * max(n - k, 0) / n) if n else 0
    if not known:
        notes.append("top-k is not in the config: active parameters and FLOPs not computed")
    attention = _attention(analysis, seq_len, notes)
    always = 0
    for name in inv.tensors:
        if name in layout.mtp_tensors or name in expert_names or owners.get(name) in expert_names:
            continue
        if layout.roles.get(name) == "embedding" and not params.tied_embeddings:
            continue
        always += inv[name].info.nbytes
    return ModelCompute(
        path=str(analysis.path),
        moe=bool([b for b in layout.blocks if not b.mtp]),
        total_params=params.total,
        active_params=params.active,
        matmul_params=matmul if known else None,
        attention_flops_per_token=attention,
        seq_len=seq_len,
        weight_bytes=inv.total_bytes,
        always_read_bytes=always,
        expert_blocks=blocks,
        mtp_params=params.mtp,
        family=analysis.family,
        notes=notes,
    )


def serving_cost(
    mc: ModelCompute,
    touched: dict[int, tuple[int, dict[str, dict[str, Any]]]],
    sizes: tuple[int, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Weight bytes a decode step of B tokens reads, and the dense model that reads as many, per B.

    ``touched``: layer index -> (its number of experts, its ``experts_touched``) from a trace
    (moediag.stats.touched). A step reads :attr:`ModelCompute.always_read_bytes` plus, per MoE block,
    the touched share of its routed experts' bytes: the trace's, from its layer of the same index and
    expert count; else the uniform-routing share (all experts where top-k is unknown). The
    equal-bandwidth dense model has ``step_bytes / bytes_per_param`` parameters, stored at the
    checkpoint's precision.
    """
    from moediag.stats.touched import BATCH_SIZES

    sizes = sizes or BATCH_SIZES
    out: dict[str, dict[str, Any]] = {}
    bpp = mc.bytes_per_param
    for b in sizes:
        expert = 0.0
        from_trace = 0
        sources = []
        for layer, e, k, nbytes in mc.expert_blocks:
            te, rows = touched.get(layer, (0, {}))
            row = rows.get(str(b)) if te == e else None
            if row is not None and row.get("share") is not None:
                share = float(row["share"])
                from_trace += 1
                sources.append("trace")
            elif k is not None and e:
                share = uniform_touched(e, k, b)
                sources.append("uniform")
            else:
                share = 1.0
                sources.append("all")
            expert += share * nbytes
        step = mc.always_read_bytes + expert
        out[str(b)] = {
            "step_bytes": round(step),
            "bytes_per_token": step / b,
            "expert_bytes": round(expert),
            "all_experts_bytes": mc.always_read_bytes + mc.expert_weight_bytes,
            "equal_bandwidth_dense_params": round(step / bpp) if bpp else None,
            "layers_from_trace": from_trace,
            "per_layer_source": sources,
        }
    return out


def trace_serving_cost(trace: Any, checkpoint: CheckpointAnalysis) -> dict[str, dict[str, Any]] | None:
    """:func:`serving_cost` of ``checkpoint`` with the touched shares of a trace analysis's layers
    (:class:`moediag.analysis.TraceAnalysis`); None when the checkpoint has no MoE layers."""
    if not checkpoint.layout.blocks:
        return None
    by_layer = {
        int(r["layer"]): (int(r["num_experts"]), r["experts_touched"])
        for r in trace.layers
        if r.get("experts_touched")
    }
    return serving_cost(model_compute(checkpoint), by_layer)
