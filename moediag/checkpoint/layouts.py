"""Family-independent rules that find MoE structure in tensor names and shapes (headers only).

The rules follow shared/design/checkpoints.md, section D:

1. Split each name into ``stack`` (``model``, ``encoder``, ``decoder``, ``mtp`` ...), layer index and the
   rest, with ``^(stack.)?(layers|blocks|block|h).L.rest``.
2. Inside a layer, find expert tensors: per-expert names (``experts.{j}.*``, ``experts.expert_{j}.*``,
   ``local_experts.{j}.*``, ``experts.linear_fc1.weight{j}``), fused tensors under ``experts.``
   (``gate_up_proj``, ``down_proj``, DBRX ``mlp.w1/v1/w2``, MXFP4 ``_blocks``/``_scales`` ...) and 3-D
   ``input_linear``/``output_linear``. Their common prefix is the MoE *block* (``mlp``,
   ``block_sparse_moe``, ``feed_forward``, ``layer.1.mlp`` ...).
3. Find routers (``gate.weight``, ``gate.wg.weight``, ``router.weight``, ``router.layer.weight``,
   ``router.classifier.weight``; 2-D with more than one row) and attach each to the expert block it
   prefixes. Logit biases (``router.bias`` ...) and selection biases (``e_score_correction_bias``,
   ``expert_bias``) attach the same way.
4. A block is MoE when it has experts. The number of experts is the router's row count (else the
   distinct expert indices, else the fused tensors' first dimension, else the config).
5. Shared experts (``shared_expert(s)``, ``shared_mlp``) belong to their layer; quantisation siblings
   (``weight_scale_inv``, ``.scale``, ``_scales``, ``qzeros`` ...) to their weight and hold no parameters.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moediag.errors import InvalidInputError

if TYPE_CHECKING:
    from moediag.checkpoint.config import NormalisedConfig
    from moediag.checkpoint.inventory import Inventory, TensorRef

__all__ = [
    "ExpertMatrix",
    "Layout",
    "MoEBlock",
    "detect_layout",
    "logical_params",
    "split_layer",
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
    r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|embedding|embeddings|shared)\.weight$"
)
MTP_STACK_RE = re.compile(r"^(?:.*\.)?mtp(?:\.|$)")

# quantisation siblings; ".scale" and "scales" count as metadata only next to their weight
_QMETA_SUFFIXES = ("weight_scale_inv", "weight_scale", "input_scale", "weight_zero_point", "g_idx", "qzeros")
_MAIN_STACKS = (
    "",
    "model",
    "transformer",
    "model.language_model",
    "language_model.model",
    "language_model",
    "model.model",
    "decoder",
    "model.decoder",
    "backbone",
)

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


# -- parameter counting -----------------------------------------------------------------------------


def _qmeta(name: str, tensors: dict[str, TensorRef]) -> str | None:
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


# -- detection --------------------------------------------------------------------------------------


@dataclass
class _Group:
    blk: str
    per_expert: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    fused: dict[str, str] = field(default_factory=dict)
    grouped: bool = False


def _dot_prefix(a: str, b: str) -> bool:
    """``a`` equals ``b`` or is a dotted prefix of it (``""`` prefixes everything)."""
    return a == b or not a or b.startswith(a + ".")


def _strip_suffix(p: str) -> tuple[str, str]:
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


def detect_layout(inv: Inventory, cfg: NormalisedConfig) -> Layout:
    """Find MoE blocks, dense layers, MTP layers and every tensor's role from names and shapes."""
    tensors = inv.tensors
    warnings: list[str] = []
    notes: list[str] = []
    bits = 4
    if cfg.quantization and isinstance(cfg.quantization.get("bits"), int):
        bits = int(cfg.quantization["bits"])

    roles: dict[str, str] = {}
    params: dict[str, int] = {}
    qmeta_of: dict[str, str] = {}
    for name, ref in tensors.items():
        owner = _qmeta(name, tensors)
        if owner is not None:
            qmeta_of[name] = owner
            roles[name] = "quant_meta"
            params[name] = 0
        else:
            params[name] = logical_params(ref, bits, name)

    # 1. layers
    by_layer: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    for name in tensors:
        sp = split_layer(name)
        if sp is not None:
            stack, layer, rest = sp
            by_layer[(stack, layer)].append((rest, name))

    hidden = cfg.hidden_size
    router_widths: Counter[int] = Counter()

    blocks: list[MoEBlock] = []
    layer_kind: dict[tuple[str, int], str] = {}
    for key in sorted(by_layer, key=lambda k: (k[0], k[1])):
        stack, layer = key
        entries = by_layer[key]
        blocks_here = _detect_blocks(stack, layer, entries, tensors, qmeta_of, params, roles, cfg, warnings)
        for b in blocks_here:
            if b.router:
                router_widths[tensors[b.router].shape[1]] += 1
        blocks.extend(blocks_here)
        layer_kind[key] = "moe" if any(b.kind == "ffn" for b in blocks_here) else "dense"
        if any(b.kind == "attention" for b in blocks_here) and layer_kind[key] == "dense":
            layer_kind[key] = "moe"

    if hidden is None and router_widths:
        hidden = router_widths.most_common(1)[0][0]
    for b in blocks:
        b.hidden_size = hidden
        b.expert_intermediate_size = _intermediate(b, tensors, params, hidden)

    # 2. MTP: a stack named mtp, or a layer index at or beyond the config's layer count in a main stack
    moe_stacks = {b.stack for b in blocks}
    mtp_tensors: set[str] = set()
    beyond: list[str] = []
    for (stack, layer), _kind in list(layer_kind.items()):
        is_mtp = bool(MTP_STACK_RE.match(stack))
        n = cfg.layers_in(stack)
        if not is_mtp and n is not None and layer >= n and (stack in moe_stacks or stack in _MAIN_STACKS):
            is_mtp = True
            if not cfg.mtp_layers:
                beyond.append(f"{stack}.{layer}" if stack else str(layer))
        if is_mtp:
            layer_kind[(stack, layer)] = "mtp"
            for _rest, name in by_layer[(stack, layer)]:
                mtp_tensors.add(name)
    for name in tensors:
        if split_layer(name) is None and MTP_STACK_RE.match(name.rsplit(".", 1)[0] + "."):
            mtp_tensors.add(name)
    for b in blocks:
        b.mtp = layer_kind.get((b.stack, b.layer)) == "mtp"
    if beyond:
        warnings.append(
            f"tensors hold layer(s) {', '.join(beyond[:4])} at or beyond the config's layer count "
            f"({cfg.num_layers}); reported as multi-token-prediction layers"
        )

    # 3. roles of everything else
    for name in tensors:
        if name in roles:
            continue
        if EMBED_RE.search(name) and split_layer(name) is None and len(tensors[name].shape) == 2:
            roles[name] = "embedding"
        else:
            roles[name] = "other"

    family_hint = _family_hint(tensors, blocks)
    lay = Layout(
        blocks=blocks,
        layers=layer_kind,
        roles=roles,
        params=params,
        mtp_tensors=mtp_tensors,
        hidden_size=hidden,
        family_hint=family_hint,
        warnings=warnings,
        notes=notes,
    )
    return lay


def _detect_blocks(
    stack: str,
    layer: int,
    entries: list[tuple[str, str]],
    tensors: dict[str, TensorRef],
    qmeta_of: dict[str, str],
    params: dict[str, int],
    roles: dict[str, str],
    cfg: NormalisedConfig,
    warnings: list[str],
) -> list[MoEBlock]:
    label = f"{stack}.{layer}" if stack else f"layer {layer}"
    groups: dict[str, _Group] = {}
    routers: dict[str, str] = {}
    logit_biases: dict[str, str] = {}
    sel_biases: list[tuple[str, str]] = []
    shared: list[tuple[str, str]] = []
    rest_of = {name: rest for rest, name in entries}
    for rest, name in entries:
        if name in qmeta_of:
            continue
        ref = tensors[name]
        m = PER_EXPERT_RE.match(rest)
        if m and not SHARED_RE.search(rest):
            g = groups.setdefault(m.group("blk") or "", _Group(m.group("blk") or ""))
            g.per_expert[int(m.group("e"))][m.group("p")] = name
            continue
        m = GROUPED_RE.match(rest)
        if m:
            g = groups.setdefault(m.group("blk") or "", _Group(m.group("blk") or ""))
            g.per_expert[int(m.group("e"))][m.group("p")] = name
            g.grouped = True
            continue
        m = FUSED_RE.match(rest)
        if m and not SHARED_RE.search(rest) and not _is_router_name(rest):
            g = groups.setdefault(m.group("blk") or "", _Group(m.group("blk") or ""))
            g.fused[m.group("p")] = name
            continue
        m = LINEAR_RE.match(rest)
        if m and len(ref.shape) == 3 and not SHARED_RE.search(rest):
            g = groups.setdefault(m.group("blk") or "", _Group(m.group("blk") or ""))
            g.fused[m.group("p") + ".weight"] = name
            continue
        if SHARED_RE.search(rest):
            shared.append((rest, name))
            continue
        matched = False
        for rx in ROUTER_RES:
            m = rx.match(rest)
            if m and len(ref.shape) == 2 and ref.shape[0] > 1:
                routers[m.group("blk") or ""] = name
                matched = True
                break
        if matched:
            continue
        for rx in LOGIT_BIAS_RES:
            m = rx.match(rest)
            if m and len(ref.shape) == 1:
                logit_biases[m.group("blk") or ""] = name
                matched = True
                break
        if matched:
            continue
        if SELECTION_BIAS_RE.search(rest):
            sel_biases.append((rest, name))

    out: list[MoEBlock] = []
    used_routers: set[str] = set()
    for blk, g in sorted(groups.items()):
        # the router whose block prefixes (or is prefixed by) the experts' block, nearest first
        rblk = None
        for cand in sorted(routers, key=lambda r: -len(r)):
            if _dot_prefix(cand, blk) or _dot_prefix(blk, cand):
                rblk = cand
                break
        router = routers.get(rblk) if rblk is not None else None
        num_ids = sorted(g.per_expert)
        fused_first = Counter(tensors[n].shape[0] for n in g.fused.values() if len(tensors[n].shape) >= 3)
        if router is not None:
            e = tensors[router].shape[0]
        elif num_ids:
            e = max(num_ids) + 1
        elif fused_first:
            e = fused_first.most_common(1)[0][0]
        else:
            e = cfg.num_experts_for(layer) or 0
        if router is None and (len(num_ids) > 1 or g.fused):
            router = _fallback_router(blk, e, entries, tensors, qmeta_of)
            if router is not None:
                routers[blk] = router
                rblk = blk
        if e <= 1 or (not num_ids and not g.fused):
            continue
        if len(num_ids) == 1 and not g.fused and router is None:
            continue
        # fused tensors must split evenly into E experts
        fused_ok: dict[str, str] = {}
        for p, name in g.fused.items():
            ref = tensors[name]
            base = p.split(".")[-1]
            if len(ref.shape) == 1:
                ok = ref.shape[0] == e
            else:
                ok = ref.numel % e == 0 and (
                    ref.shape[0] == e or ref.shape[0] % e == 0 or base in ("weight1", "weight2")
                )
            if ok:
                fused_ok[p] = name
            else:
                warnings.append(
                    f"{label}: {name!r} sits under experts but does not split into {e} experts; "
                    "counted as a non-expert tensor"
                )
        if not num_ids and not fused_ok:
            continue
        kind = "attention" if re.search(r"(?:^|\.)(?:self_)?attn|attention", blk) else "ffn"
        b = MoEBlock(stack=stack, layer=layer, block=blk, kind=kind, mtp=False, num_experts=e, router=router)
        if router:
            used_routers.add(router)
            roles[router] = "router"
            b.router_params = params[router]
            if rblk is not None and rblk in logit_biases:
                bias = logit_biases[rblk]
                if _is_selection_gate_bias(bias, cfg):
                    b.selection_bias = bias
                    roles[bias] = "selection_bias"
                    params[bias] = 0
                else:
                    b.router_bias = bias
                    roles[bias] = "router_bias"
                    b.router_params += params[bias]
        for rest, name in sel_biases:
            if b.selection_bias is None and any(_dot_prefix(p, rest) for p in (blk, rblk or blk)):
                b.selection_bias = name
        # experts
        b.expert_ids = num_ids if num_ids else list(range(e))
        if num_ids and g.fused:
            warnings.append(f"{label}: block {blk!r} mixes per-expert and fused expert tensors")
        b.layout = "grouped" if g.grouped else ("per-expert" if num_ids else "fused")
        expert_names: list[str] = []
        for j in num_ids:
            expert_names.extend(g.per_expert[j].values())
        expert_names.extend(fused_ok.values())
        # quantisation siblings of expert weights belong to the experts too
        meta = [mn for mn, owner in qmeta_of.items() if owner in set(expert_names) and mn in rest_of]
        for n in expert_names:
            roles[n] = "expert"
        b.expert_tensors = expert_names + meta
        b.expert_params = sum(params[n] for n in expert_names)
        b.matrices = _matrices(g, fused_ok, num_ids, tensors, qmeta_of, label, warnings)
        if num_ids and router is not None and len(num_ids) != e:
            warnings.append(
                f"{label}: router has {e} rows but weights for {len(num_ids)} experts were found "
                "(an expert-parallel shard?)"
            )
        if num_ids and (max(num_ids) + 1 != len(num_ids)):
            warnings.append(
                f"{label}: expert indices are not contiguous ({len(num_ids)} found, max {max(num_ids)})"
            )
        if router is None:
            warnings.append(f"{label}: block {blk!r} has {e} experts but no router tensor was recognised")
        out.append(b)

    # selection biases: by block prefix, or the only bias beside the only block
    unplaced = [(r, n) for r, n in sel_biases if all(b.selection_bias != n for b in out)]
    if len(unplaced) == 1 and len(out) == 1 and out[0].selection_bias is None:
        out[0].selection_bias = unplaced[0][1]
    for b in out:
        if b.selection_bias:
            roles[b.selection_bias] = "selection_bias"
            params[b.selection_bias] = 0  # a buffer moved by the balancing rule, not a trained parameter

    for blk, name in routers.items():
        if name not in used_routers and not any(_dot_prefix(blk, g) or _dot_prefix(g, blk) for g in groups):
            warnings.append(f"{label}: {name!r} looks like a router but no experts sit beside it; ignored")

    # shared experts belong to the layer's FFN block
    if shared:
        target = next((b for b in out if b.kind == "ffn"), None)
        for _rest, name in shared:
            roles[name] = "shared"
        for mn, owner in qmeta_of.items():
            if owner in {n for _, n in shared}:
                roles[mn] = "quant_meta"
        if target is not None:
            target.shared_tensors = [n for _, n in shared]
            target.shared_params = sum(params[n] for _, n in shared)
            target.shared_experts = cfg.shared_experts or 1
    return out


def _fallback_router(
    blk: str, e: int, entries: list[tuple[str, str]], tensors: dict[str, TensorRef], qmeta_of: dict[str, str]
) -> str | None:
    """For a family without a router rule: a 2-D [E, H] tensor in the block, named like a gate or router."""
    if e <= 1:
        return None
    for rest, name in entries:
        ref = tensors[name]
        if blk and not rest.startswith(blk + "."):
            continue
        if name in qmeta_of or len(ref.shape) != 2 or ref.shape[0] != e:
            continue
        if PER_EXPERT_RE.match(rest) or re.search(r"gate_proj|gate_up|shared", rest):
            continue
        if re.search(r"(?:gate|router|wg|classifier)[^.]*\.weight$", rest):
            return name
    return None


def _is_router_name(rest: str) -> bool:
    return bool(re.search(r"(?:^|\.)router(?:\.|$)", rest))


def _is_selection_gate_bias(name: str, cfg: NormalisedConfig) -> bool:
    """DeepSeek's inference format stores e_score_correction_bias as ``ffn.gate.bias`` (sigmoid routing)."""
    return name.endswith("gate.bias") and (cfg.score_function == "sigmoid" or cfg.family == "deepseek-native")


def _matrices(
    g: _Group,
    fused_ok: dict[str, str],
    ids: list[int],
    tensors: dict[str, TensorRef],
    qmeta_of: dict[str, str],
    label: str,
    warnings: list[str],
) -> list[ExpertMatrix]:
    scale_for: dict[str, list[str]] = defaultdict(list)
    for mn, owner in qmeta_of.items():
        scale_for[owner].append(mn)

    def scale_of(weight: str) -> str | None:
        for s in scale_for.get(weight, []):
            if s.endswith(("weight_scale_inv", ".scale", "_scales", "weight_scale")):
                return s
        return None

    def quant_of(weight: str) -> str | None:
        ref = tensors[weight]
        if weight.endswith("_blocks") and ref.dtype == "U8":
            return "mxfp4" if scale_of(weight) else "unsupported: MXFP4 blocks without _scales"
        if ref.dtype.startswith("F8"):
            return "fp8"
        if ref.dtype not in ("F32", "F16", "BF16", "F64"):
            return f"unsupported: {ref.dtype} ({weight.rsplit('.', 1)[-1]})"
        return None

    out: list[ExpertMatrix] = []
    if ids:
        keys: dict[str, str] = {}
        for j in ids:
            for p in g.per_expert[j]:
                key, suf = _strip_suffix(p)
                if suf in ("weight", "qweight") or suf.startswith("weight"):
                    keys[key] = p
        for key, p in sorted(keys.items()):
            names = {j: g.per_expert[j][p] for j in ids if p in g.per_expert[j]}
            if len(names) != len(ids):
                # an incomplete checkpoint (a tensor lost in a download or a bad conversion): one line, exit 2
                missing = [j for j in ids if j not in names]
                some = tensors[next(iter(names.values()))]
                raise InvalidInputError(
                    f"{label}: {len(missing)} of {len(ids)} experts have no {key!r} tensor (e.g. expert "
                    f"{missing[0]}; expert {next(iter(names))} has {next(iter(names.values()))!r}); the "
                    "checkpoint is incomplete",
                    some.file.path,
                )
            if len(tensors[next(iter(names.values()))].shape) < 2:
                continue
            first = next(iter(names.values()))
            scales = {j: s for j, n in names.items() if (s := scale_of(n)) is not None}
            out.append(
                ExpertMatrix(
                    key=key,
                    role=ROLE_BY_NAME.get(key, "other"),
                    names=names,
                    scales=scales or None,
                    quant=quant_of(first),
                )
            )
    for p, name in sorted(fused_ok.items()):
        key, suf = _strip_suffix(p)
        if suf in ("bias", "scales", "scale_inv", "scale") or len(tensors[name].shape) < 2:
            continue
        out.append(
            ExpertMatrix(
                key=key,
                role=ROLE_BY_NAME.get(key, ROLE_BY_NAME.get(key.split(".")[-1], "other")),
                fused=name,
                scales=scale_of(name),
                quant=quant_of(name),
            )
        )
    return out


def _intermediate(
    b: MoEBlock, tensors: dict[str, TensorRef], params: dict[str, int], hidden: int | None
) -> int | None:
    """Expert intermediate size: one expert's down projection divided by the hidden size."""
    if not hidden:
        return None
    for want in ("down", "in", "gate", "up"):
        for m in b.matrices:
            if m.role != want:
                continue
            if m.names:
                n = params[next(iter(m.names.values()))]
            elif m.fused:
                n = params[m.fused] // max(b.num_experts, 1)
            else:
                continue
            if n % hidden == 0:
                return n // hidden
    return None


def _family_hint(tensors: dict[str, TensorRef], blocks: list[MoEBlock]) -> str | None:
    """A family guess from tensor names alone (used when there is no config.json)."""
    if not blocks:
        return None
    # the first MoE layer and the top-level tensors are enough to recognise a family
    first = blocks[0]
    names = [
        n for n in tensors if (sp := split_layer(n)) is None or (sp[0], sp[1]) == (first.stack, first.layer)
    ]

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
