"""The result of a replay (:class:`ReplayResult`): per-layer figures, the summary, skipped layers and the
``replay --json`` document.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from moediag.io import envelope
from moediag.replay.expert_parallel import max_vio_or_none
from moediag.replay.layer import LayerReplay, ratio
from moediag.replay.placement import ReplicaPlan
from moediag.replay.settings import JSON_FORMAT, MARGIN_EDGES, STAT_KEYS, SUMMARY_STAT_KEYS
from moediag.stats.capacity import POLICIES

NO_ROUTER_INPUT = "no router_input in the trace"


def skip_lines(skipped: list[dict[str, Any]]) -> list[str]:
    """``layers 0-3: no router_input in the trace``: the skipped layers grouped by reason, as ranges."""
    by_reason: dict[str, list[int]] = {}
    for x in skipped:
        by_reason.setdefault(str(x["reason"]), []).append(int(x["layer"]))
    out = []
    for reason, layers in by_reason.items():
        layers.sort()
        spans: list[str] = []
        start = prev = layers[0]
        for nxt in [*layers[1:], None]:
            if nxt is not None and nxt == prev + 1:
                prev = nxt
                continue
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            if nxt is not None:
                start = prev = nxt
        word = "layer" if len(layers) == 1 else "layers"
        out.append(f"{word} {', '.join(spans)}: {reason}")
    return out


@dataclass
class ReplayResult:
    """What a replay found; :meth:`to_dict` is the ``--json`` document (docs/replay.md)."""

    checkpoint: str
    trace: str
    device: str
    dtype: str
    layers: dict[int, LayerReplay]
    stats: dict[str, Any]
    skipped: list[dict[str, Any]]
    settings: dict[str, Any]
    ep: dict[int, dict[str, Any]] = field(default_factory=dict)
    placement: dict[int, list[list[int]]] = field(default_factory=dict)
    plan: ReplicaPlan | None = None
    seconds: float = 0.0
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    #: things the reader should know about the result (a what-if that changes nothing, ...)
    notes: list[str] = field(default_factory=list)

    def layer_dict(self, layer: int) -> dict[str, Any]:
        acc = self.layers[layer]
        s = self.settings
        stats_row = next(x for x in self.stats["layers"] if x["layer"] == layer)
        row: dict[str, Any] = {
            "layer": layer,
            "num_experts": acc.num_experts,
            "top_k": acc.top_k,
            "whatif_top_k": acc.whatif_top_k,
            "tokens": acc.tokens,
            "excluded_nonfinite": acc.excluded_nonfinite,
            "compared": acc.compared,
            "top1_agreement": ratio(acc.top1_hits, acc.compared),
            "topk_agreement": ratio(acc.topk_hits, acc.compared),
            "topk_overlap": ratio(acc.overlap_sum, acc.compared * acc.top_k),
            "mismatched_tokens": acc.compared - acc.topk_hits,
            "mismatched_near_ties": acc.mismatched_near_ties,
            "logits_max_abs_diff": acc.logits_max_abs_diff if acc.logits_compared else None,
            "load_before": acc.load_before.tolist(),
            "max_vio_before": max_vio_or_none(acc.load_before),
        }
        if s["whatif"]:
            row["whatif_changed_share"] = ratio(acc.whatif_changed, acc.tokens)
            # share of the model's own choices the what-if keeps (k -> 1 keeps at most 1/k of them)
            row["whatif_topk_overlap"] = ratio(acc.whatif_overlap_sum, acc.tokens * acc.top_k)
        row["stats"] = {key: stats_row.get(key) for key in STAT_KEYS}
        cf = s["capacity_factor"]
        if cf is not None:
            rate = stats_row["drop_rate"]
            by_pos = stats_row["drop_rate_by_position"]
            # the total is the same under every policy; where the drops fall (by position) is not
            row["capacity"] = {
                "capacity_factor": cf,
                "min_capacity": s["min_capacity"],
                "drop_policy": s["drop_policy"],
                "drop_rate": stats_row["drop_rate_total"][str(cf)],
                "drop_rate_other_policy": {p: rate[p][str(cf)] for p in POLICIES if p != s["drop_policy"]},
                "drop_rate_by_position": {
                    "buckets": by_pos["buckets"],
                    "assignments": by_pos["assignments"],
                    "rate": by_pos["rate"][s["drop_policy"]][str(cf)],
                    "rate_by_policy": {p: by_pos["rate"][p][str(cf)] for p in POLICIES},
                },
            }
        if s["noise"] is not None:
            tok, fl = acc.noise_tokens, acc.noise_flips
            row["noise"] = {
                "sigma": s["noise"],
                "samples": s["samples"],
                "flip_share": ratio(float(fl.sum()), float(tok.sum())),
                "by_margin": {
                    "edges": list(MARGIN_EDGES),
                    "token_samples": tok.tolist(),
                    "flip_share": [ratio(float(f), float(t)) for f, t in zip(fl, tok, strict=True)],
                },
            }
        if layer in self.ep:
            row["ep"] = self.ep[layer]
        return row

    def to_dict(self) -> dict[str, Any]:
        layers = [self.layer_dict(layer) for layer in sorted(self.layers)]
        compared = sum(a.compared for a in self.layers.values())
        summary: dict[str, Any] = {
            "layers": len(layers),
            "skipped": len(self.skipped),
            "tokens": max((a.tokens for a in self.layers.values()), default=0),
            "compared": compared,
            "top1_agreement": ratio(sum(a.top1_hits for a in self.layers.values()), compared),
            "topk_agreement": ratio(sum(a.topk_hits for a in self.layers.values()), compared),
            "topk_agreement_min": min(
                (x["topk_agreement"] for x in layers if x["topk_agreement"] is not None), default=None
            ),
            "mismatched_tokens": sum(x["mismatched_tokens"] for x in layers),
            "mismatched_near_ties": sum(x["mismatched_near_ties"] for x in layers),
            "match": None if compared == 0 else all(x["mismatched_tokens"] == 0 for x in layers),
            "stats": {key: self.stats["summary"].get(key) for key in SUMMARY_STAT_KEYS},
        }
        if self.settings["capacity_factor"] is not None:
            rates = [x["capacity"]["drop_rate"] for x in layers if x["capacity"]["drop_rate"] is not None]
            summary["drop_rate_mean"] = sum(rates) / len(rates) if rates else None
            summary["drop_rate_max"] = max(rates, default=None)
        if self.settings["noise"] is not None:
            shares = [x["noise"]["flip_share"] for x in layers if x["noise"]["flip_share"] is not None]
            summary["noise_flip_share_mean"] = sum(shares) / len(shares) if shares else None
        if self.ep:
            before = [
                v["balancedness_before"] for v in self.ep.values() if v["balancedness_before"] is not None
            ]
            after = [v["balancedness_after"] for v in self.ep.values() if v["balancedness_after"] is not None]
            summary["balancedness_before_mean"] = sum(before) / len(before) if before else None
            summary["balancedness_after_mean"] = sum(after) / len(after) if after else None
            summary["balancedness_before_min"] = min(before, default=None)
            summary["balancedness_after_min"] = min(after, default=None)
            for key in ("busiest_rank_inflation_before", "busiest_rank_inflation_after"):
                vals = [v[key] for v in self.ep.values() if v[key] is not None]
                summary[f"{key}_max"] = max(vals, default=None)
            volume = [
                v["a2a_bytes_per_token"] for v in self.ep.values() if v["a2a_bytes_per_token"] is not None
            ]
            # a token passes every MoE layer: the volumes add up over layers
            summary["a2a_bytes_per_token"] = sum(volume) if volume else None
        if self.plan is not None:
            summary["replica_plan"] = {
                "target_balancedness": self.plan.target,
                "replicas": self.plan.replicas,
                "reached": self.plan.reached,
                "balancedness_min": self.plan.min_balancedness,
            }
        return {
            "meta": envelope.meta(
                "replay",
                JSON_FORMAT,
                created=self.created,
                checkpoint=self.checkpoint,
                trace=self.trace,
                device=self.device,
                dtype=self.dtype,
                seconds=round(self.seconds, 3),
                settings={k: v for k, v in self.settings.items() if k != "whatif"},
            ),
            "summary": summary,
            "layers": layers,
            "skipped": self.skipped,
            "notes": list(self.notes),
        }

    def placement_document(self) -> dict[str, Any] | None:
        """The proposed placement as a placement file (None without ``ep_size``)."""
        if not self.placement:
            return None
        from moediag.replay.placement_file import placement_document

        return placement_document(self.settings["ep_size"], self.placement, self.settings["replicas"])
