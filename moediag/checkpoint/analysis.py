"""One call from a checkpoint path to a :class:`CheckpointAnalysis`: structure, parameters, weight health.

>>> from moediag.checkpoint import analyze_checkpoint
>>> result = analyze_checkpoint("path/to/checkpoint", weights=False)   # doctest: +SKIP
>>> result.to_dict()["summary"]["active_params"]                       # doctest: +SKIP

The JSON contract (``to_dict``) is documented key by key in docs/checkpoints.md.
"""

from __future__ import annotations

import gc
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moediag import options
from moediag.checkpoint.config import TOP_K_FAMILIES, NormalisedConfig, normalise_config
from moediag.checkpoint.inventory import Inventory, open_inventory
from moediag.checkpoint.layouts import Layout, MoEBlock, detect_layout
from moediag.checkpoint.params import ParamCounts, block_key, count_params
from moediag.checkpoint.routers import RouterSpec, specs_from_layout, top_k_for
from moediag.checkpoint.weights import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_SAMPLE,
    bias_stats,
    expert_similarity,
    load_tensor_f32,
    matrix_bytes,
    pass_cost,
    router_stats,
)
from moediag.errors import UsageError

__all__ = ["FORMAT", "CheckpointAnalysis", "LayerResult", "analyze_checkpoint", "check_weights"]

#: Schema version of ``to_dict()`` (meta.format). History: 1 = first release.
FORMAT = 1

#: What :meth:`CheckpointAnalysis.weights_estimate` assumes, measured on the 2-core development machine
#: under other load (docs/benchmarks.md): expert bytes read and dequantised per second, and Gram
#: multiply-adds per second (float32 matmul on 2 threads).
READ_BYTES_PER_S = 0.25e9
GRAM_MADDS_PER_S = 12e9


@dataclass
class LayerResult:
    """Everything reported for one MoE block."""

    block: MoEBlock
    top_k: int | None
    router: dict[str, Any] | None = None
    bias: dict[str, Any] | None = None
    router_bias: dict[str, Any] | None = None
    redundant_pairs: list[list[Any]] | None = None
    distinct_experts: int | None = None
    expert_norms: list[float] | None = None
    zero_experts: list[int] = field(default_factory=list)
    similarity_matrices: list[str] = field(default_factory=list)
    weights_note: str | None = None
    screen: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        b = self.block
        r = self.router or {}
        return {
            "layer": b.layer,
            "stack": b.stack,
            "block": b.block,
            "kind": b.kind,
            "mtp": b.mtp,
            "num_experts": b.num_experts,
            "experts_found": len(b.expert_ids),
            "top_k": self.top_k,
            "shared_experts": b.shared_experts,
            "layout": b.layout,
            "router_tensor": b.router,
            "router_bias_tensor": b.router_bias,
            "selection_bias_tensor": b.selection_bias,
            "hidden_size": b.hidden_size,
            "expert_intermediate_size": b.expert_intermediate_size,
            "params_per_expert": round(b.params_per_expert),
            "expert_params": b.expert_params,
            "shared_params": b.shared_params,
            "router_params": b.router_params,
            "quantization": sorted({m.quant for m in b.matrices if m.quant}) or None,
            "router_norms": r.get("router_norms"),
            "router_norm_stats": r.get("router_norm_stats"),
            "router_norm_outliers": r.get("router_norm_outliers"),
            "router_cosine": r.get("router_cosine"),
            "bias": self.bias,
            "router_bias": self.router_bias,
            "redundant_pairs": self.redundant_pairs,
            "distinct_experts": self.distinct_experts,
            "expert_norms": self.expert_norms,
            "zero_experts": self.zero_experts,
            "similarity_matrices": self.similarity_matrices,
            "redundancy_screen": self.screen,
            "weights_note": self.weights_note,
        }


@dataclass
class CheckpointAnalysis:
    """The result of :func:`analyze_checkpoint`."""

    path: Path
    inventory: Inventory
    config: NormalisedConfig
    layout: Layout
    params: ParamCounts
    layers: list[LayerResult]
    routers: list[RouterSpec]
    family: str | None
    family_source: str | None
    weights_checked: bool
    redundancy_threshold: float
    layer_filter: int | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: fraction of each expert's rows the redundancy screen reads (1: every row, exactly) and its seed
    sample: float = DEFAULT_SAMPLE
    seed: int = 0

    def weight_bytes(self, sample: float | None = None) -> int:
        """Bytes :func:`check_weights` reads for the expert-redundancy pass with ``sample`` (default:
        this analysis's): the screen's sampled rows; verifying its candidates comes on top."""
        f = self.sample if sample is None else sample
        return sum(matrix_bytes(self.inventory, lr.block, f, self.seed) for lr in self.layers)

    def weights_estimate(self, sample: float | None = None) -> tuple[int, float]:
        """(bytes, seconds) the weights pass is expected to take: the screen (or the exact pass), from
        the bytes it reads and the Gram products it computes, at this module's measured rates."""
        f = self.sample if sample is None else sample
        nbytes = madds = 0
        for lr in self.layers:
            b, m = pass_cost(self.inventory, lr.block, f, self.seed)
            nbytes, madds = nbytes + b, madds + m
        return nbytes, nbytes / READ_BYTES_PER_S + madds / GRAM_MADDS_PER_S

    # -- summaries ------------------------------------------------------------------------------
    @property
    def main_blocks(self) -> list[MoEBlock]:
        return [b for b in self.layout.blocks if not b.mtp]

    def _common(self, values: list[Any]) -> Any:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return Counter(vals).most_common(1)[0][0]

    def stacks(self) -> list[dict[str, Any]]:
        out = []
        for s in self.layout.stacks:
            kinds = {L: k for (st, L), k in self.layout.layers.items() if st == s}
            out.append(
                {
                    "name": s,
                    "moe_layers": sorted(L for L, k in kinds.items() if k == "moe"),
                    "dense_layers": sorted(L for L, k in kinds.items() if k == "dense"),
                    "mtp_layers": sorted(L for L, k in kinds.items() if k == "mtp"),
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        """A verdict: ``ok`` (nothing found), ``warn`` (findings), ``unknown`` (weights not checked)."""
        findings: list[str] = []
        main = [lr for lr in self.layers if not lr.block.mtp]
        dup_layers = [lr for lr in main if lr.redundant_pairs]
        if dup_layers:
            n = sum(len(lr.redundant_pairs or []) for lr in dup_layers)
            findings.append(
                f"{n} duplicate expert pair(s) in {len(dup_layers)} layer(s) "
                f"(cosine >= {self.redundancy_threshold})"
            )
        zero = [lr for lr in main if lr.zero_experts]
        if zero:
            findings.append(f"all-zero experts in {len(zero)} layer(s)")
        out_layers = [lr for lr in main if lr.router and lr.router.get("router_norm_outliers")]
        if out_layers:
            n = sum(len(lr.router["router_norm_outliers"]) for lr in out_layers if lr.router)
            findings.append(f"{n} router-norm outlier(s) in {len(out_layers)} layer(s)")
        sim_router = [
            lr for lr in main if lr.router and (lr.router.get("router_cosine") or {}).get("similar_pairs")
        ]
        if sim_router:
            findings.append(f"near-identical router rows in {len(sim_router)} layer(s)")
        pushed = [lr for lr in main if lr.bias and lr.bias.get("pushed")]
        if pushed:
            findings.append(f"selection bias pushes tokens toward a few experts in {len(pushed)} layer(s)")
        if not self.main_blocks:
            status = "ok"
        elif findings:
            status = "warn"
        elif not self.weights_checked:
            status = "unknown"
        else:
            status = "ok"
        return {"status": status, "findings": findings}

    def summary(self) -> dict[str, Any]:
        p = self.params
        main = self.main_blocks
        cfg = self.config
        e_vals = [b.num_experts for b in main]
        k_vals = [lr.top_k for lr in self.layers if not lr.block.mtp]
        counts = Counter(k for k in self.layout.layers.values())
        quant = Counter(m.quant.split(":")[0] for b in self.layout.blocks for m in b.matrices if m.quant)
        qcfg = cfg.quantization
        dup_total = sum(len(lr.redundant_pairs or []) for lr in self.layers if not lr.block.mtp)
        distinct = [
            lr.distinct_experts for lr in self.layers if lr.distinct_experts is not None and not lr.block.mtp
        ]
        return {
            "family": self.family,
            "family_source": self.family_source,
            "model_type": cfg.model_type,
            "architectures": cfg.architectures,
            "is_moe": bool(main),
            "hidden_size": self.layout.hidden_size,
            "moe_layers": counts.get("moe", 0),
            "dense_layers": counts.get("dense", 0),
            "mtp_layers": counts.get("mtp", 0),
            "stacks": self.stacks(),
            "num_experts": self._common(e_vals) if main else 0,
            "top_k": self._common(k_vals),
            "shared_experts": self._common([b.shared_experts for b in main]) if main else 0,
            "expert_intermediate_size": self._common([b.expert_intermediate_size for b in main]),
            "score_function": (self.routers[0].score_function if self.routers else cfg.score_function)
            if main
            else None,
            "norm_topk_prob": cfg.norm_topk_prob if main else None,
            "n_group": cfg.n_group if main else None,
            "topk_group": cfg.topk_group if main else None,
            "group_score": (self.routers[0].group_score if self.routers else cfg.group_score)
            if main and cfg.n_group
            else None,
            "routed_scaling_factor": cfg.routed_scaling_factor if main else None,
            "selection_bias": any(b.selection_bias for b in main),
            "router_bias": any(b.router_bias for b in main),
            "total_params": p.total,
            "active_params": p.active,
            "expert_params": p.expert,
            "shared_expert_params": p.shared,
            "router_params": p.router,
            "embedding_params": p.embedding,
            "non_expert_params": p.non_expert,
            "mtp_params": p.mtp,
            "expert_share": p.expert_share,
            "active_share": p.active_share,
            "dense_equivalent": p.dense_equivalent(),
            "quantization": (
                {"method": (qcfg or {}).get("quant_method"), "expert_tensors": dict(quant)}
                if quant or qcfg
                else None
            ),
            "config_sources": dict(sorted(cfg.sources.items())),
            "weights_checked": self.weights_checked,
            "redundant_pairs": dup_total if self.weights_checked else None,
            "min_distinct_experts": min(distinct) if distinct else None,
            "health": self.health(),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def meta(self) -> dict[str, Any]:
        from moediag.io import envelope

        inv = self.inventory
        return envelope.meta(
            "checkpoint",
            FORMAT,
            path=str(self.path),
            files=len(inv.files),
            index=inv.index_path.name if inv.index_path else None,
            config=str(inv.config_path) if inv.config_path else None,
            tensors=len(inv.tensors),
            bytes=inv.total_bytes,
            weights=self.weights_checked,
            redundancy_threshold=self.redundancy_threshold,
            sample=self.sample if self.weights_checked else None,
            seed=self.seed if self.weights_checked else None,
            layer=self.layer_filter,
        )

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable result (``--json``); keys documented in docs/checkpoints.md."""
        from moediag.analysis.verdict import checkpoint_verdict

        return _finite(
            {
                "meta": self.meta(),
                "summary": {**self.summary(), "verdict": checkpoint_verdict(self).to_dict()},
                "layers": [lr.to_dict() for lr in self.layers],
            }
        )


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# -- the analysis -----------------------------------------------------------------------------------


def _family(inv: Inventory, layout: Layout, cfg: NormalisedConfig) -> tuple[str | None, str | None]:
    if cfg.family:
        return cfg.family, "config"
    if layout.family_hint:
        return layout.family_hint, "tensor names"
    return None, None


def _cross_check(cfg: NormalisedConfig, layout: Layout, warnings: list[str], notes: list[str]) -> None:
    """Config vs tensors: tensors win, disagreements become warnings."""
    if not cfg.raw:
        return
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
            f"config hidden size {cfg.hidden_size} differs from the router width {layout.hidden_size}"
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


def check_weights(
    analysis: CheckpointAnalysis,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    plan: Callable[[int], None] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> CheckpointAnalysis:
    """Fill in router, bias and expert-redundancy diagnostics of ``analysis`` (in place; returned too).

    Reads one layer at a time, in chunks of at most ``chunk_bytes`` (as float32); ``progress(n)`` is
    called with the bytes read after each chunk. ``analysis.weight_bytes()`` is the screen's total;
    ``plan(n)`` is told the bytes of each exact verification before it starts (add them to the total).
    ``workers=N`` (local processes) or ``scheduler=`` (a Dask cluster, as for traces: every worker must
    see the checkpoint at the same path) checks layers side by side, one torch thread each; progress
    then comes a layer at a time.
    """
    inv = analysis.inventory
    args = (analysis.redundancy_threshold, chunk_bytes)
    if (workers is None or workers <= 1) and scheduler is None:
        for lr in analysis.layers:
            _weights_for(inv, lr, *args, progress, plan, analysis.sample, analysis.seed)
    else:
        from moediag.analysis.runners import open_runner, ordered, submit_task

        with open_runner(workers, scheduler) as runner:
            assert runner is not None
            n = workers if workers is not None else 4

            def submit(lr: LayerResult) -> Any:
                sub = inv.subset(_block_tensors(lr.block))
                return submit_task(runner, _layer_task, sub, lr, *args, analysis.sample, analysis.seed)

            # ordered() is typed for trace units but generic in what it submits
            results = ordered(submit, analysis.layers, 2 * n)  # type: ignore[arg-type]
            for lr, done in zip(analysis.layers, results, strict=True):
                lr.__dict__.update({k: v for k, v in done.__dict__.items() if k != "block"})
                if done.screen and plan is not None:
                    plan(done.screen["verify_bytes"])
                if progress is not None:
                    progress((done.screen or {}).get("bytes", 0) + (done.screen or {}).get("verify_bytes", 0))
    screens = [lr.screen for lr in analysis.layers if lr.screen]
    if screens:
        cand = sum(sc["candidate_pairs"] for sc in screens)
        verified = sum(len(sc["verified_experts"]) for sc in screens)
        analysis.notes.append(
            f"expert redundancy screened on a {analysis.sample:.1%} sample of rows (seed {analysis.seed}) "
            f"in {len(screens)} layer(s): {cand} candidate pair(s), {verified} expert(s) verified on the "
            "full weights; unverified experts' norms are estimates (--sample 1: every row, exactly)"
        )
    skipped = sorted({lr.weights_note for lr in analysis.layers if lr.weights_note})
    for s in skipped[:3]:
        if s not in analysis.notes:
            analysis.notes.append(s)
    analysis.weights_checked = bool(analysis.layers)
    return analysis


def _block_tensors(b: MoEBlock) -> list[str]:
    """Every tensor the weights pass of block ``b`` reads."""
    names = [n for n in (b.router, b.router_bias, b.selection_bias) if n]
    for m in b.matrices:
        names += list((m.names or {}).values()) + ([m.fused] if m.fused else [])
        names += list(m.scales.values()) if isinstance(m.scales, dict) else ([m.scales] if m.scales else [])
    return names


def _layer_task(
    inv: Inventory, lr: LayerResult, threshold: float, chunk_bytes: int, sample: float, seed: int
) -> LayerResult:
    """One layer's weights pass in a worker (one torch thread: workers share the machine's cores)."""
    from moediag.analysis.units import pinned_threads

    with pinned_threads(1):
        _weights_for(inv, lr, threshold, chunk_bytes, None, None, sample, seed)
    return lr


def _weights_for(
    inv: Inventory,
    lr: LayerResult,
    threshold: float,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    plan: Callable[[int], None] | None = None,
    sample: float = 1.0,
    seed: int = 0,
) -> None:
    b = lr.block
    if b.router:
        lr.router = router_stats(load_tensor_f32(inv, b.router), threshold)
    if b.selection_bias:
        lr.bias = bias_stats(load_tensor_f32(inv, b.selection_bias), "selection", b.selection_bias)
    if b.router_bias:
        lr.router_bias = bias_stats(load_tensor_f32(inv, b.router_bias), "logit", b.router_bias)

    sim = expert_similarity(
        inv,
        b,
        threshold=threshold,
        chunk_bytes=chunk_bytes,
        progress=progress,
        sample=sample,
        seed=seed,
        plan=plan,
    )
    lr.screen = sim.screen
    if sim.cosine is not None:
        lr.redundant_pairs = sim.pairs
        lr.distinct_experts = sim.distinct
        lr.expert_norms = sim.norms
        lr.zero_experts = sim.zero_experts
        lr.similarity_matrices = sim.matrices
    if sim.skipped:
        lr.weights_note = (
            "expert similarity "
            + ("partial" if sim.cosine is not None else "not computed")
            + ": "
            + "; ".join(sim.skipped)
        )
    elif sim.cosine is None:
        lr.weights_note = "expert similarity not computed: no expert weight matrices found"
