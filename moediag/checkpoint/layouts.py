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

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from moediag.checkpoint.moe_blocks import detect_blocks, intermediate_size
from moediag.checkpoint.structure import ExpertMatrix, Layout, MoEBlock
from moediag.checkpoint.tensor_names import (
    EMBED_RE,
    MTP_STACK_RE,
    family_hint,
    logical_params,
    qmeta_owner,
    split_layer,
)

if TYPE_CHECKING:
    from moediag.checkpoint.config import NormalisedConfig
    from moediag.checkpoint.inventory import Inventory

__all__ = [
    "ExpertMatrix",
    "Layout",
    "MoEBlock",
    "detect_layout",
    "logical_params",
    "split_layer",
]

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
    #: weight -> its quantisation siblings (built once: every lookup below is by weight, O(1))
    meta_by_owner: dict[str, list[str]] = defaultdict(list)
    orphans: list[str] = []
    for name, ref in tensors.items():
        owner = qmeta_owner(name, tensors)
        if owner is None and name.endswith("_scales") and ref.dtype == "U8":
            owner = name[: -len("_scales")] + "_blocks"  # MXFP4 scales whose blocks are missing
        if owner is not None:
            qmeta_of[name] = owner
            meta_by_owner[owner].append(name)
            roles[name] = "quant_meta"
            params[name] = 0  # scales hold no parameters, with or without their weight
            if owner not in tensors:
                orphans.append(f"{name} (no {owner})")
        else:
            params[name] = logical_params(ref, bits, name)
    if orphans:
        warnings.append(
            f"{len(orphans)} quantisation scale tensor(s) without their weight, e.g. {orphans[0]}: "
            "a weight lost in a download or a conversion?"
        )

    # 1. layers
    by_layer: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
    split_of = {name: split_layer(name) for name in tensors}  # once: the rules below reuse it
    for name, sp in split_of.items():
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
        blocks_here = detect_blocks(
            stack, layer, entries, tensors, qmeta_of, meta_by_owner, params, roles, cfg, warnings
        )
        for b in blocks_here:
            if b.router:
                router_widths[tensors[b.router].shape[1]] += 1
        blocks.extend(blocks_here)
        layer_kind[key] = "moe" if any(b.kind == "ffn" for b in blocks_here) else "dense"
        if any(b.kind == "attention" for b in blocks_here) and layer_kind[key] == "dense":
            layer_kind[key] = "moe"

    if router_widths:  # tensors are the authority (a router is [experts, hidden]); analysis warns
        hidden = router_widths.most_common(1)[0][0]
    for b in blocks:
        b.hidden_size = hidden
        b.expert_intermediate_size = intermediate_size(b, tensors, params, hidden)

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
    for name, sp in split_of.items():
        if sp is None and MTP_STACK_RE.match(name.rsplit(".", 1)[0] + "."):
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
        if split_of[name] is None and len(tensors[name].shape) == 2 and EMBED_RE.search(name):
            roles[name] = "embedding"
        else:
            roles[name] = "other"

    return Layout(
        blocks=blocks,
        layers=layer_kind,
        roles=roles,
        params=params,
        mtp_tensors=mtp_tensors,
        hidden_size=hidden,
        family_hint=family_hint(split_of, blocks),
        warnings=warnings,
        notes=notes,
    )
