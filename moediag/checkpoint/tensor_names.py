"""The naming rules of MoE checkpoints: what a tensor's name says about its layer, its role (expert,
router, bias, shared expert, quantisation sibling) and the family that wrote it. Names only; shapes are
checked by :mod:`moediag.checkpoint.moe_blocks`. The catalogue of real names is
shared/design/checkpoints.md.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moediag.checkpoint.inventory import TensorRef
    from moediag.checkpoint.structure import MoEBlock

__all__ = [
    "ROLE_BY_NAME",
    "dot_prefix",
    "family_hint",
    "is_router_name",
    "logical_params",
    "qmeta_owner",
    "split_layer",
    "strip_suffix",
]

LAYER_RE = re.compile(r"^(?P<stack>(?:.*?\.)?)(?:layers|blocks|block|h)\.(?P<L>\d+)\.(?P<rest>.+)$")

# per-expert names: blk.experts.{j}.p | blk.experts.expert_{j}.p | blk(.experts).local_experts.{j}.p
PER_EXPERT_RE = re.compile(
    r"^(?:(?P<blk>.*?)\.)?(?:experts\.(?:local_experts\.|expert_)?|local_experts\.)(?P<e>\d+)\.(?P<p>.+)$"
)
# Megatron TEGroupedMLP: blk.experts.linear_fc1.weight{j}
GROUPED_RE = re.compile(r"^(?:(?P<blk>.*?)\.)?experts\.(?P<p>linear_fc[12]\.weight)(?P<e>\d+)$")
# anything else under blk.experts. (fused stacks): gate_up_proj, down_proj, mlp.w1, weight1, *_blocks ...
FUSED_RE = re.compile(r"^(?:(?P<blk>.*?)\.)?experts\.(?P<p>(?!\d)(?!expert_\d)(?!local_experts\.).+)$")
# Granite / JetMoE: blk.input_linear.weight [E, 2I, H], blk.output_linear.weight [E, H, I]
LINEAR_RE = re.compile(r"^(?:(?P<blk>.*?)\.)?(?P<p>input_linear|output_linear)\.weight$")

ROUTER_RES = (
    re.compile(
        r"^(?P<blk>(?:.*\.)?(?:mlp|block_sparse_moe|feed_forward|moe_block|ffn|moe|moe_layer))\.gate\.weight$"
    ),
    re.compile(r"^(?P<blk>.+)\.gate\.wg\.weight$"),
    re.compile(r"^(?P<blk>.+)\.router\.(?:layer|classifier)\.weight$"),
    re.compile(r"^(?:(?P<blk>.+)\.)?router\.weight$"),
)
LOGIT_BIAS_RES = (
    re.compile(r"^(?:(?P<blk>.+)\.)?router\.(?:layer\.|classifier\.)?bias$"),
    re.compile(
        r"^(?P<blk>(?:.*\.)?(?:mlp|block_sparse_moe|feed_forward|moe_block|ffn|moe|moe_layer))\.gate\.bias$"
    ),
)
SELECTION_BIAS_RE = re.compile(r"(?:^|\.)(?:e_score_correction_bias|expert_bias)$")
SHARED_RE = re.compile(r"(?:^|\.)(?:shared_experts?|shared_mlp)(?:\.|_gate\.)")
EMBED_RE = re.compile(
    r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|embed|embedding|embeddings|shared)\.weight$"
)
MTP_STACK_RE = re.compile(r"^(?:.*\.)?mtp(?:\.|$)")

# quantisation siblings; ".scale" and "scales" count as metadata only next to their weight
_QMETA_SUFFIXES = ("weight_scale_inv", "weight_scale", "input_scale", "weight_zero_point", "g_idx", "qzeros")

ROLE_BY_NAME = {
    "w1": "gate",
    "gate_proj": "gate",
    "linear": "gate",
    "mlp.w1": "gate",
    "w3": "up",
    "up_proj": "up",
    "linear_v": "up",
    "mlp.v1": "up",
    "v1": "up",
    "w2": "down",
    "down_proj": "down",
    "linear_1": "down",
    "wo": "down",
    "fc2": "down",
    "linear_fc2": "down",
    "mlp.w2": "down",
    "output_linear": "down",
    "weight2": "down",
    "w2_weight": "down",
    "wi": "in",
    "fc1": "in",
    "gate_up_proj": "gate_up",
    "linear_fc1": "gate_up",
    "input_linear": "gate_up",
    "weight1": "gate_up",
    "w13_weight": "gate_up",
}


def split_layer(name: str) -> tuple[str, int, str] | None:
    """``(stack, layer, rest)`` for a per-layer tensor name, else None. The stack has no trailing dot."""
    m = LAYER_RE.match(name)
    if not m:
        return None
    return m.group("stack").rstrip("."), int(m.group("L")), m.group("rest")


def qmeta_owner(name: str, tensors: dict[str, TensorRef]) -> str | None:
    """The weight a quantisation-metadata tensor belongs to, or None when ``name`` is not metadata."""
    last = name.rsplit(".", 1)[-1]
    if last in _QMETA_SUFFIXES:
        return (
            name[: -len(last)] + "weight"
            if last != "qzeros" and last != "g_idx"
            else name[: -len(last)] + "qweight"
        )
    if name.endswith("_scales") and name[: -len("_scales")] + "_blocks" in tensors:
        return name[: -len("_scales")] + "_blocks"
    if last == "scale":
        w = name[: -len("scale")] + "weight"
        if w in tensors and tensors[w].dtype.startswith(("F8", "I", "U")):
            return w
    if last == "scales":
        w = name[: -len("scales")] + "qweight"
        if w in tensors:
            return w
    return None


def logical_params(ref: TensorRef, bits: int = 4, name: str | None = None) -> int:
    """Parameters a tensor stands for: packed MXFP4 blocks hold two a byte, GPTQ/AWQ ``qweight`` 32/bits.

    ``name``: the inventory's name for it, when that differs from the name on disk (an alias).
    """
    name = name or ref.name
    if name.endswith("_blocks") and ref.dtype == "U8":
        return ref.numel * 2
    if name.endswith("qweight") and ref.dtype in ("I32", "U32"):
        return ref.numel * (32 // max(bits, 1))
    return ref.numel


def dot_prefix(a: str, b: str) -> bool:
    """``a`` equals ``b`` or is a dotted prefix of it (``""`` prefixes everything)."""
    return a == b or not a or b.startswith(a + ".")


def strip_suffix(p: str) -> tuple[str, str]:
    """Projection key and suffix: ``gate_proj.weight`` -> (gate_proj, weight); ``gate_up_proj_bias`` ->
    (gate_up_proj, bias); ``down_proj_blocks`` -> (down_proj, blocks)."""
    for suf in ("_bias", "_blocks", "_scales", "_scale_inv", "_scale"):
        if p.endswith(suf):
            return p[: -len(suf)], suf[1:]
    if "." in p:
        head, tail = p.rsplit(".", 1)
        if tail in ("weight", "bias", "qweight", "scale", "scales", "qzeros", "g_idx") or tail.startswith(
            "weight"
        ):
            return head, tail
    return p, "weight"


def is_router_name(rest: str) -> bool:
    return bool(re.search(r"(?:^|\.)router(?:\.|$)", rest))


def family_hint(split_of: dict[str, tuple[str, int, str] | None], blocks: list[MoEBlock]) -> str | None:
    """A family guess from tensor names alone (used when there is no config.json)."""
    if not blocks:
        return None
    # the first MoE layer and the top-level tensors are enough to recognise a family
    first = blocks[0]
    names = [n for n, sp in split_of.items() if sp is None or (sp[0], sp[1]) == (first.stack, first.layer)]

    def has(rx: str) -> bool:
        r = re.compile(rx)
        return any(r.search(n) for n in names)

    if has(r"\.experts\.mlp\.w1$"):
        return "dbrx"
    if has(r"experts\.expert_\d+\.wi\.weight$"):
        return "switch_transformers"
    if has(r"experts\.expert_\d+\.fc1\.weight$"):
        return "nllb-moe"
    if has(r"local_experts\.\d+\.linear_fc1|experts\.linear_fc1\.weight\d+$"):
        return "megatron"
    if has(r"(?:^|\.)ffn\.experts\.\d+\.w1\.weight$"):
        return "deepseek-native"
    if has(r"experts\.gate_up_proj_blocks$") or has(r"mlp\.router\.bias$"):
        return "gpt_oss"
    if has(r"block_sparse_moe\.input_linear\.weight$"):
        return "granitemoe"
    if has(r"mlp\.input_linear\.weight$") and has(r"router\.layer\.weight$"):
        return "jetmoe"
    if has(r"e_score_correction_bias$"):
        return "deepseek_v3-like"
    if has(r"block_sparse_moe\.experts\.\d+\.w1\.weight$"):
        return "mixtral-like"
    if has(r"feed_forward\.router\.weight$"):
        return "jamba-like"
    if has(r"shared_expert_gate\.weight$"):
        return "qwen2_moe-like"
    if has(r"mlp\.experts\.\d+\.gate_proj\.weight$"):
        return "qwen-like"
    if has(r"experts\.gate_up_proj$"):
        return "transformers-fused"
    return "unknown"
