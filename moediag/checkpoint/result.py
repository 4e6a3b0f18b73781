"""What a checkpoint inspection returns: :class:`CheckpointAnalysis` (structure, parameters, routers and,
after the weights pass, their health) with one :class:`LayerResult` per MoE block, and their JSON form.

The JSON contract (``to_dict``) is documented key by key in docs/checkpoints.md.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moediag.checkpoint.config import NormalisedConfig
from moediag.checkpoint.inventory import Inventory
from moediag.checkpoint.layouts import Layout, MoEBlock
from moediag.checkpoint.params import ParamCounts
from moediag.checkpoint.routers import RouterSpec
from moediag.checkpoint.similarity import DEFAULT_SAMPLE, matrix_bytes, pass_cost

__all__ = ["FORMAT", "GRAM_MADDS_PER_S", "READ_BYTES_PER_S", "CheckpointAnalysis", "LayerResult"]

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

    def nonfinite(self) -> dict[str, Any] | None:
        """What holds NaN or infinite values, or None when the weights were not read: ``router``,
        ``selection_bias``, ``router_bias`` (value counts) and ``experts`` (ids), each only when found;
        ``total`` sums them (what ``check``'s ``max_nonfinite`` compares)."""
        if (
            self.router is None
            and self.bias is None
            and self.router_bias is None
            and self.expert_norms is None
        ):
            return None
        found: dict[str, Any] = {}
        for key, stats in (
            ("router", self.router),
            ("selection_bias", self.bias),
            ("router_bias", self.router_bias),
        ):
            if stats and stats.get("nonfinite"):
                found[key] = int(stats["nonfinite"])
        # an expert with a NaN or infinite value in the rows read has a norm that is not finite
        bad = [
            e
            for e, v in zip(self.block.expert_ids, self.expert_norms or [], strict=False)
            if not math.isfinite(v)
        ]
        if bad:
            found["experts"] = bad
        total = sum(v for k, v in found.items() if k != "experts") + len(bad)
        return {**found, "total": total}

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
            "zero_experts": self.zero_experts if self.expert_norms is not None else None,
            "nonfinite": self.nonfinite(),
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
        broken = [lr for lr in self.layers if (lr.nonfinite() or {}).get("total")]
        if broken:
            what = sorted({k for lr in broken for k in (lr.nonfinite() or {}) if k != "total"})
            findings.append(f"NaN or infinite values ({', '.join(what)}) in {len(broken)} layer(s)")
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
