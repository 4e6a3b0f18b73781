"""One call from a checkpoint path to a :class:`CheckpointAnalysis`: structure, parameters, weight health.

>>> from moediag.checkpoint import analyze_checkpoint
>>> result = analyze_checkpoint("path/to/checkpoint", weights=False)   # doctest: +SKIP
>>> result.to_dict()["summary"]["active_params"]                       # doctest: +SKIP

The JSON contract (``to_dict``) is documented key by key in docs/checkpoints.md.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from moediag import options
from moediag.checkpoint.config import NormalisedConfig, normalise_config, unusable_sizes
from moediag.checkpoint.config_keys import TOP_K_FAMILIES
from moediag.checkpoint.inventory import Inventory, open_inventory
from moediag.checkpoint.layouts import Layout, detect_layout
from moediag.checkpoint.params import block_key, count_params
from moediag.checkpoint.result import FORMAT, CheckpointAnalysis, LayerResult
from moediag.checkpoint.routers import specs_from_layout, top_k_for
from moediag.checkpoint.similarity import DEFAULT_CHUNK_BYTES, DEFAULT_SAMPLE
from moediag.checkpoint.weights_pass import check_weights
from moediag.errors import UsageError

__all__ = ["FORMAT", "CheckpointAnalysis", "LayerResult", "analyze_checkpoint", "check_weights"]

# -- the analysis -----------------------------------------------------------------------------------


def _family(inv: Inventory, layout: Layout, cfg: NormalisedConfig) -> tuple[str | None, str | None]:
    if cfg.family:
        return cfg.family, "config"
    if layout.family_hint:
        return layout.family_hint, "tensor names"
    return None, None


def _projection_check(layout: Layout, warnings: list[str]) -> None:
    """Tensors vs tensors: an MoE layer whose experts lack a projection the other MoE layers of its stack
    have (a fused tensor lost whole, which the per-expert completeness check cannot see)."""
    by_stack: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for b in layout.blocks:
        if b.kind == "ffn" and not b.mtp:
            by_stack.setdefault(b.stack, []).append((b.label, frozenset(m.role for m in b.matrices)))
    for rows in by_stack.values():
        usual = Counter(roles for _, roles in rows).most_common(1)[0][0]
        short = [(label, sorted(usual - roles)) for label, roles in rows if usual - roles]
        if short and len(short) < len(rows):
            label, lacking = short[0]
            more = f" (and {len(short) - 1} more layer(s))" if len(short) > 1 else ""
            warnings.append(
                f"layer {label}: the experts have no {'/'.join(lacking)} projection that the other MoE "
                f"layers have{more}; its sizes and parameter counts lack it"
            )


def _cross_check(cfg: NormalisedConfig, layout: Layout, warnings: list[str], notes: list[str]) -> None:
    """Config vs tensors: tensors win, disagreements become warnings."""
    if not cfg.raw:
        return
    warnings += unusable_sizes(cfg)
    main = [b for b in layout.blocks if not b.mtp]
    for b in main:
        ce = cfg.num_experts_for(b.layer)
        if ce is not None and ce != b.num_experts and b.kind == "ffn":
            warnings.append(
                f"layer {b.label}: config says {ce} experts ({cfg.sources.get('num_experts')}), "
                f"tensors hold {b.num_experts}; using the tensors"
            )
        k = cfg.top_k_for(b.layer)
        if k is not None and k > b.num_experts:
            warnings.append(f"layer {b.label}: top-k {k} exceeds the {b.num_experts} experts found")
    ffn_stacks = {b.stack for b in main if b.kind == "ffn"} or {s for s in layout.stacks}
    mismatched: list[str] = []
    for (stack, layer), kind in sorted(layout.layers.items()):
        if kind == "mtp" or stack not in ffn_stacks:
            continue
        exp = cfg.expected_moe(stack, layer)
        if exp is None and cfg.num_experts and main:
            exp = True
        if exp is None:
            continue
        if exp != (kind == "moe"):
            mismatched.append(
                f"{stack + '.' if stack else ''}{layer} "
                f"({'MoE' if exp else 'dense'} by config, {kind} in tensors)"
            )
    if mismatched:
        warnings.append(
            f"config's dense-layer rule disagrees with the tensors at layer(s) {', '.join(mismatched[:6])}"
            + (f" and {len(mismatched) - 6} more" if len(mismatched) > 6 else "")
            + "; using the tensors"
        )
    if cfg.hidden_size and layout.hidden_size and cfg.hidden_size != layout.hidden_size:
        warnings.append(
            f"config hidden size {cfg.hidden_size} differs from the router width {layout.hidden_size}; "
            "using the tensors"
        )
    ci = cfg.expert_intermediate_size
    found_i = {b.expert_intermediate_size for b in main if b.expert_intermediate_size}
    if ci and found_i and ci not in found_i:
        warnings.append(
            f"config expert intermediate size {ci} ({cfg.sources.get('expert_intermediate_size')}) differs "
            f"from the tensors ({', '.join(map(str, sorted(found_i)))})"
        )
    has_shared = any(b.shared_tensors for b in main)
    if cfg.shared_experts and not has_shared and main:
        warnings.append(
            f"config says {cfg.shared_experts} shared expert(s) but no shared-expert tensors were found"
        )
    if cfg.mtp_layers and not any(k == "mtp" for k in layout.layers.values()):
        notes.append(
            f"config declares {cfg.mtp_layers} multi-token-prediction layer(s) "
            f"({cfg.sources.get('mtp_layers')}) "
            "that this checkpoint does not hold (transformers drops them on save)"
        )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while headers become ~10 objects a tensor (none of them cyclic):
    collections triggered by the allocations rescan everything built so far, and for 90k tensors cost
    a quarter of the structure time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def analyze_checkpoint(
    path: str | os.PathLike[str] | Inventory,
    *,
    weights: bool = True,
    layer: int | None = None,
    redundancy_threshold: float = options.default("redundancy_threshold"),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    sample: float = DEFAULT_SAMPLE,
    seed: int = 0,
) -> CheckpointAnalysis:
    """Inspect a checkpoint: structure and parameter counts from headers, then (``weights``) router and
    expert health read one bounded chunk at a time. ``layer`` restricts the per-layer results (and the
    weight pass) to that layer index. ``sample``: fraction of each expert's rows the redundancy screen
    reads (1 = every row; see :func:`~moediag.checkpoint.weights.expert_similarity`).
    Raises :class:`~moediag.errors.MoediagError` subclasses on bad input.
    """
    if not -1.0 <= redundancy_threshold <= 1.0:
        raise UsageError(f"redundancy threshold {redundancy_threshold} is not a cosine in [-1, 1]")
    if not 0.0 < sample <= 1.0:
        raise UsageError(f"sample {sample} is not a fraction of rows in (0, 1]")
    with _gc_paused():
        inv = path if isinstance(path, Inventory) else open_inventory(path)
        cfg = normalise_config(inv.config)
        layout = detect_layout(inv, cfg)
    family, family_source = _family(inv, layout, cfg)
    if not cfg.raw and family:
        # no config.json: take routing defaults from the family the tensor names suggest
        base = family.removesuffix("-like")
        guessed = normalise_config(
            {"model_type": base, **({"num_local_experts": 2} if layout.blocks else {})}
        )
        cfg.score_function = guessed.score_function if layout.blocks else None
        cfg.norm_topk_prob = guessed.norm_topk_prob
        cfg.family = None
        if base in TOP_K_FAMILIES:
            cfg.top_k = TOP_K_FAMILIES[base]
            cfg.sources["top_k"] = "family default (from tensor names)"
        if cfg.score_function:
            cfg.sources["score_function"] = "family default (from tensor names)"
    if cfg.score_function is None and any(b.selection_bias for b in layout.blocks):
        cfg.score_function = "sigmoid"
        cfg.sources["score_function"] = "assumed from the selection bias"
    warnings = list(inv.warnings) + list(layout.warnings)
    notes = list(layout.notes)
    _cross_check(cfg, layout, warnings, notes)
    _projection_check(layout, warnings)

    ks = {block_key(b.stack, b.layer, b.block): top_k_for(cfg, b) for b in layout.blocks}
    params = count_params(layout, ks)
    if layout.blocks and params.active is None:
        warnings.append("top-k is not in the config; active parameters not computed")
    if not layout.blocks:
        notes.append(f"no MoE layers: a dense model with {params.total:,} parameters")
    specs = specs_from_layout(layout, cfg)

    blocks = layout.blocks
    if layer is not None:
        blocks = [b for b in blocks if b.layer == layer]
        if not blocks:
            moe = sorted({b.layer for b in layout.blocks})
            raise UsageError(
                f"layer {layer} is not an MoE layer of this checkpoint"
                + (
                    f" (MoE layers: {', '.join(map(str, moe[:12]))}{' ...' if len(moe) > 12 else ''})"
                    if moe
                    else " (it has no MoE layers)"
                ),
                inv.path,
            )
    results = [LayerResult(block=b, top_k=ks[block_key(b.stack, b.layer, b.block)]) for b in blocks]
    analysis = CheckpointAnalysis(
        path=Path(inv.path),
        inventory=inv,
        config=cfg,
        layout=layout,
        params=params,
        layers=results,
        routers=specs,
        family=family,
        family_source=family_source,
        weights_checked=False,
        redundancy_threshold=redundancy_threshold,
        layer_filter=layer,
        warnings=warnings,
        notes=notes,
        sample=sample,
        seed=seed,
    )
    if weights:
        check_weights(analysis, chunk_bytes=chunk_bytes, progress=progress)
    return analysis
