"""The MoE blocks of one layer, from its tensors' names and shapes: expert groups (per-expert, fused or
grouped), the router and biases each attaches to, shared experts, and the expert matrices the weights
pass reads (with their quantisation). Linear in the layer's tensors.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moediag.checkpoint.structure import ExpertMatrix, MoEBlock
from moediag.checkpoint.tensor_names import (
    FUSED_RE,
    GROUPED_RE,
    LINEAR_RE,
    LOGIT_BIAS_RES,
    PER_EXPERT_RE,
    ROLE_BY_NAME,
    ROUTER_RES,
    SELECTION_BIAS_RE,
    SHARED_RE,
    dot_prefix,
    is_router_name,
    strip_suffix,
)
from moediag.errors import InvalidInputError

if TYPE_CHECKING:
    from moediag.checkpoint.config import NormalisedConfig
    from moediag.checkpoint.inventory import TensorRef

__all__ = ["detect_blocks", "intermediate_size"]


@dataclass
class _Group:
    blk: str
    per_expert: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    fused: dict[str, str] = field(default_factory=dict)
    grouped: bool = False


def detect_blocks(
    stack: str,
    layer: int,
    entries: list[tuple[str, str]],
    tensors: dict[str, TensorRef],
    qmeta_of: dict[str, str],
    meta_by_owner: dict[str, list[str]],
    params: dict[str, int],
    roles: dict[str, str],
    cfg: NormalisedConfig,
    warnings: list[str],
) -> list[MoEBlock]:
    """The MoE blocks of one layer. Linear in the layer's tensors: no lookup scans another list."""
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
        if m and not SHARED_RE.search(rest) and not is_router_name(rest):
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
            if dot_prefix(cand, blk) or dot_prefix(blk, cand):
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
            if b.selection_bias is None and any(dot_prefix(p, rest) for p in (blk, rblk or blk)):
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
        meta = [mn for n in expert_names for mn in meta_by_owner.get(n, ()) if mn in rest_of]
        for n in expert_names:
            roles[n] = "expert"
        b.expert_tensors = expert_names + meta
        b.expert_params = sum(params[n] for n in expert_names)
        b.matrices = _matrices(g, fused_ok, num_ids, tensors, meta_by_owner, label, warnings)
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
        if name not in used_routers and not any(dot_prefix(blk, g) or dot_prefix(g, blk) for g in groups):
            warnings.append(f"{label}: {name!r} looks like a router but no experts sit beside it; ignored")

    # shared experts belong to the layer's FFN block
    if shared:
        target = next((b for b in out if b.kind == "ffn"), None)
        for _rest, name in shared:
            roles[name] = "shared"
        for _rest, name in shared:
            for mn in meta_by_owner.get(name, ()):
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


def _is_selection_gate_bias(name: str, cfg: NormalisedConfig) -> bool:
    """DeepSeek's inference format stores e_score_correction_bias as ``ffn.gate.bias`` (sigmoid routing)."""
    return name.endswith("gate.bias") and (cfg.score_function == "sigmoid" or cfg.family == "deepseek-native")


def _matrices(
    g: _Group,
    fused_ok: dict[str, str],
    ids: list[int],
    tensors: dict[str, TensorRef],
    meta_by_owner: dict[str, list[str]],
    label: str,
    warnings: list[str],
) -> list[ExpertMatrix]:
    def scale_of(weight: str) -> str | None:
        for s in meta_by_owner.get(weight, ()):
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
                key, suf = strip_suffix(p)
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
        key, suf = strip_suffix(p)
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


def intermediate_size(
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
