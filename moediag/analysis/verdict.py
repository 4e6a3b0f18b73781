"""The judgement: one verdict for a trace and one for a checkpoint, shared by every output.

>>> from moediag.analysis.verdict import trace_verdict                           # doctest: +SKIP
>>> v = trace_verdict(analysis)        # or an ``inspect --json`` document
>>> v.level, v.text, v.reasons                                           # doctest: +SKIP
('imbalanced', 'IMBALANCED: worst MaxVio 2.55 at layer 3 (balanced = 0)', ['layer 3: max_vio 2.550 > 1.000'])

The terminal, the HTML report, Markdown and ``inspect --json`` (``summary.verdict``) print these; nothing
else decides whether routing is healthy. A trace is judged by the ``moediag check`` rules that are on by
default (their thresholds, from :data:`moediag.checks.RULES`, or from a :class:`~moediag.checks.CheckConfig`
such as ``[tool.moediag.check]``): a dead-expert rule failing is ``unhealthy``, any other failing rule
``imbalanced``, none ``healthy``. A checkpoint holds no routing, so it is never called healthy: its level is
``weights_only`` (its weights were read; findings make it a warning), ``structure_only`` (weights not
read) or ``dense``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal[
    "healthy", "imbalanced", "unhealthy", "weights_only", "structure_only", "dense",
    "match", "near_ties", "mismatch", "not_compared",
]  # fmt: skip
Severity = Literal["ok", "warn", "bad", "info"]

__all__ = [
    "UNRELATED_AGREEMENT",
    "Verdict",
    "checkpoint_verdict",
    "human",
    "replay_verdict",
    "threshold",
    "trace_findings",
    "trace_verdict",
]

#: dead/cold-expert rules: failing one means experts are lost, not only uneven
_LOSS_RULES = ("max_dead", "max_cold")
#: the style of each severity in the terminal (rich)
STYLES: dict[str, str] = {"ok": "bold green", "warn": "bold yellow", "bad": "bold red", "info": "bold"}


@dataclass(frozen=True)
class Verdict:
    """``level`` (a word for machines), ``text`` (one line for people), ``reasons`` (what decided it),
    ``severity`` (``ok`` | ``warn`` | ``bad`` | ``info``: colour and badge)."""

    level: Level
    text: str
    severity: Severity
    reasons: list[str] = field(default_factory=list)

    @property
    def style(self) -> str:
        """The rich style of the verdict line."""
        return STYLES[self.severity]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "severity": self.severity,
            "text": self.text,
            "reasons": list(self.reasons),
        }


def threshold(rule: str, config: Any = None) -> float | None:
    """A check rule's threshold: from ``config`` (a CheckConfig) when given, else the rule table's default;
    None when the rule is off. Plots and report findings draw their guides with it."""
    from moediag.checks import RULES_BY_NAME

    value = config[rule] if config is not None else RULES_BY_NAME[rule].key.default
    return None if value is None else float(value)


def _document(source: Any) -> Mapping[str, Any]:
    """An ``inspect --json`` document from a TraceAnalysis / CheckpointAnalysis or the document itself."""
    if isinstance(source, Mapping):
        return source
    if hasattr(source, "computed"):  # TraceAnalysis: the figures without the verdict (no recursion)
        computed = source.computed()
        return {"meta": {"kind": "trace"}, "summary": computed["summary"], "layers": computed["layers"]}
    return {"meta": source.meta(), "summary": source.summary()}  # CheckpointAnalysis


def trace_verdict(source: Any, config: Any = None) -> Verdict:
    """The verdict of a trace analysis (a ``TraceAnalysis`` or its ``inspect --json`` document).

    ``config``: a :class:`~moediag.checks.CheckConfig` whose thresholds judge (default: the rule table's).
    """
    from moediag.checks import CheckConfig, run_checks

    doc = _document(source)
    s = doc.get("summary") or {}
    rows = [r for r in doc.get("layers") or [] if not r.get("mtp")]
    # the verdict describes whatever is there; failing closed on nothing to judge is check's job
    report = run_checks(
        {"meta": {"kind": "trace"}, "layers": rows}, config or CheckConfig(), allow_empty=True
    )
    failed = report.failed
    reasons = [_reason(o) for o in failed]
    vio = s.get("max_vio") or {}
    worst_vio, worst_layer = vio.get("worst"), vio.get("worst_layer")
    dead = int(s.get("dead_experts") or 0)
    at = f"worst MaxVio {worst_vio:.2f} at layer {worst_layer}" if worst_vio is not None else "no loads"
    lost = [o for o in failed if o.name in _LOSS_RULES]
    if lost:
        what = f"{dead} dead expert(s)" if dead else f"{s.get('cold_experts', 0)} cold expert(s)"
        return Verdict("unhealthy", f"UNHEALTHY: {what}; {at}", "bad", reasons)
    if failed:
        names = ", ".join(o.name for o in failed)
        others = "" if [o.name for o in failed] == ["max_vio"] else f"; fails {names}"
        return Verdict("imbalanced", f"IMBALANCED: {at} (balanced = 0){others}", "warn", reasons)
    skipped = [o for o in report.outcomes if o.name in _LOSS_RULES and o.status == "skip"]
    if dead and skipped:
        reasons = [f"{dead} dead expert(s), but {skipped[0].reason}"]
        return Verdict(
            "healthy", f"HEALTHY: too few tokens to judge {dead} dead expert(s); {at}", "warn", reasons
        )
    tail = f"; worst MaxVio {worst_vio:.2f}" if worst_vio is not None else ""
    return Verdict("healthy", "HEALTHY: no dead experts" + tail, "ok", reasons)


def trace_findings(analysis: Any, config: Any = None) -> list[str]:
    """The main findings of a trace analysis in plain words (plain text, not escaped), worst first: dead
    experts, the worst imbalance, layers over the ``max_cv`` rule's threshold (``config``, else the
    analysis' ``check_config``, else the rule table's), cold experts, drops at capacity factor 1.0, tokens
    near the top-k boundary, experts below their layer's accuracy, excluded rows. The HTML report lists
    them under its verdict."""
    from moediag.render.words import fold

    s = analysis.summary
    rows = analysis.layers
    out: list[str] = []
    dead_rows = [r for r in rows if r["dead_experts"]]
    if dead_rows:
        where = "; ".join(f"layer {r['layer']}: expert {fold(r['dead_experts'], 6)}" for r in dead_rows[:5])
        more = f"; and {len(dead_rows) - 5} more layers" if len(dead_rows) > 5 else ""
        out.append(
            f"{s['dead_experts']} dead expert(s) (no tokens at all) in {len(dead_rows)} layer(s): "
            f"{where}{more}."
        )
    vio = s["max_vio"]
    if vio["worst"] is not None:
        out.append(
            f"Worst imbalance: layer {vio['worst_layer']}, MaxVio {vio['worst']:.2f}: its busiest expert "
            f"gets {1 + vio['worst']:.2f}× the balanced load (mean MaxVio over layers {vio['mean']:.2f}; "
            "balanced = 0)."
        )
    cv_bound = threshold("max_cv", config if config is not None else getattr(analysis, "check_config", None))
    high_cv = [
        r["layer"] for r in rows if r.get("cv") is not None and cv_bound is not None and r["cv"] > cv_bound
    ]
    if high_cv:
        out.append(
            f"{len(high_cv)} of {len(rows)} layers have a load CV above {cv_bound:g} (check rule max_cv): "
            f"layers {fold(high_cv)}."
        )
    cold = s["cold_experts"] - s["dead_experts"]
    if cold > 0:
        eps = analysis.options.cold_eps
        out.append(f"{cold} further expert(s) are cold (share below {eps:g}/E) but not dead.")
    drops: list[tuple[float, int]] = [
        (v, r["layer"]) for r in rows if (v := (r.get("drop_rate_total") or {}).get("1.0")) is not None
    ]
    if drops:
        worst, lay = max(drops)
        out.append(
            f"With capacity factor 1.0, up to {100 * worst:.1f}% of assignments would be dropped (layer "
            f"{lay}; the same share under every drop policy, only which tokens drop differs)."
        )
    flips: list[tuple[float, int]] = [
        (v, r["layer"]) for r in rows if (v := (r.get("margin_below") or {}).get("0.01")) is not None
    ]
    if flips:
        worst, lay = max(flips)
        out.append(
            f"Routing sensitivity: in layer {lay}, {100 * worst:.1f}% of tokens have a top-k margin below "
            "0.01, so their expert choice flips under small noise."
        )
    acc_rows = [
        r
        for r in rows
        if any(x.get("below_overall") for x in (r.get("expert_accuracy") or []) if isinstance(x, dict))
    ]
    if acc_rows:
        n = sum(
            sum(1 for x in r["expert_accuracy"] if isinstance(x, dict) and x.get("below_overall"))
            for r in acc_rows
        )
        out.append(
            f"{n} expert(s) in {len(acc_rows)} layer(s) have accuracy wholly below their layer's overall "
            "accuracy (Wilson 95% interval)."
        )
    if s.get("excluded_nonfinite"):
        out.append(f"{s['excluded_nonfinite']} token row(s) with NaN/Inf router logits were excluded.")
    if not out:
        out.append("No dead experts, no notable imbalance.")
    return out


def _reason(outcome: Any) -> str:
    """``layer 3: max_vio 2.549 > 1.000 (8 of 8 layers fail)``: a failed rule's worst result."""
    worst = outcome.worst
    text = worst.message() if worst is not None else outcome.name
    n, of = len(outcome.failures), len(outcome.results)
    return f"{text} ({n} of {of} layers fail)" if outcome.scope == "layer" and of > 1 else text


def checkpoint_verdict(source: Any) -> Verdict:
    """The verdict of a checkpoint (a ``CheckpointAnalysis`` or its ``inspect --json`` document): weights
    only, never healthy for routing -- loads and dead experts need a trace."""
    doc = _document(source)
    s = doc.get("summary") or {}
    if s.get("is_moe") is False:
        return Verdict(
            "dense", f"DENSE: no MoE layers; {human(s.get('total_params') or 0)} parameters", "info"
        )
    h = s.get("health") or {}
    k = s.get("top_k") or "?"
    what = f"{s.get('moe_layers')} MoE layers x {s.get('num_experts')} experts, top-{k}"
    only = (doc.get("meta") or {}).get("layer")
    if only is not None:  # --layer: the weights of that layer only were judged; say so
        what += f"; weights of layer {only} only (drop --layer to judge them all)"
    later = "; routing health (loads, dead experts) needs a trace: moediag record, then inspect the trace"
    findings = [str(x) for x in h.get("findings") or []]
    if h.get("status") == "warn":
        return Verdict(
            "weights_only", f"WEIGHTS ONLY: CHECK: {what}; " + "; ".join(findings) + later, "warn", findings
        )
    if h.get("status") == "unknown":
        return Verdict("structure_only", f"STRUCTURE ONLY: {what}; weights not read (--no-weights)", "info")
    return Verdict(
        "weights_only",
        f"WEIGHTS ONLY: {what}; no duplicate experts or router-norm outliers" + later,
        "info",
        ["no duplicate experts, router-norm outliers or pushed biases in the weights"],
    )


#: replay: top-k agreement below this suggests the trace came from other routers (another model or
#: checkpoint); dtype and kernel differences flip near-ties only
UNRELATED_AGREEMENT = 0.5


def replay_verdict(doc: Mapping[str, Any]) -> Verdict:
    """Do a trace and a checkpoint belong together? The verdict of a ``moediag replay --json`` document
    (:meth:`moediag.replay.ReplayResult.to_dict`): ``match`` (the replay reproduces the recorded top-k),
    ``near_ties`` (every difference is a near-tie: precision noise), ``mismatch``, or ``not_compared``
    (the trace records no routing). A top-k agreement below :data:`UNRELATED_AGREEMENT` adds the question
    whether the trace was recorded from this checkpoint."""
    s = doc["summary"]
    meta = doc["meta"]
    where = f"{s['layers']} layer(s), {s['tokens']} tokens, {meta['device']} {meta['dtype']}"
    if s["match"] is None:
        return Verdict(
            "not_compared", f"replayed {where}; the trace records no routing to compare with", "info"
        )
    if s["match"]:
        return Verdict("match", f"MATCH: replay reproduces the recorded top-k exactly ({where})", "ok")
    ties = s["mismatched_near_ties"]
    tie_note = f", {ties} of them near-ties" if ties else ""
    agreement = s["topk_agreement"]
    reasons = [f"{s['mismatched_tokens']} token-layers differ{tie_note}"]
    hint = ""
    if agreement is not None and agreement < UNRELATED_AGREEMENT:
        hint = " — far below any replay of the same weights: was the trace recorded from this checkpoint?"
        reasons.append(f"top-k agreement {agreement:.4f} < {UNRELATED_AGREEMENT}")
    shown = "—" if agreement is None else f"{100 * agreement:.2f}%"
    text = (
        f"MISMATCH: top-k agreement {shown} ({s['mismatched_tokens']} token-layers differ{tie_note}; {where})"
        + hint
    )
    if s["mismatched_tokens"] > ties:
        return Verdict("mismatch", text, "bad", reasons)
    return Verdict("near_ties", text, "warn", reasons)


def human(n: float | int | None) -> str:
    """1234 -> 1.23K, 6.7e9 -> 6.70B."""
    if n is None:
        return "—"
    v = float(n)
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g}{unit}" if abs(v) / size < 100 else f"{v / size:.0f}{unit}"
    return f"{int(v)}" if v == int(v) else f"{v:.3g}"
