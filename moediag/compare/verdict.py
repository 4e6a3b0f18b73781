"""Is trace B better, worse, or unchanged against trace A? The verdict of ``moediag compare``.

The figures and thresholds are the gate's (:mod:`moediag.checks`): every rule that is on (defaults,
``[tool.moediag.check]``, or ``--config``) and applies to traces gives one figure per trace, computed by
the rule's own extractor. A layer-wise rule (MaxVio, CV, entropy) compares the worst layer; a count
summed over layers (dead experts) compares the sums. A figure *moved* when it changed by more than
``baseline_margin`` (the margin ``check --baseline`` allows; whole experts for counts), after rounding to
the rule's precision: B is **worse** when any figure moved the bad way, **better** when some moved the
good way and none the bad way, else **unchanged**. ``compare --fail-on-regression`` exits 1 on worse,
as ``check --baseline A`` would fail on B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["better", "worse", "unchanged"]


@dataclass
class FigureChange:
    rule: str
    figure: str
    a: float
    b: float
    direction: Literal["max", "min"]
    precision: int
    change: Literal["worse", "better", "same"]
    threshold: float | None
    #: where the figure comes from: "worst layer" or "sum over layers"
    over: str

    def text(self) -> str:
        fa, fb = f"{self.a:.{self.precision}f}", f"{self.b:.{self.precision}f}"
        out = f"{self.figure} {fa} -> {fb}"
        if self.precision == 0:
            diff = int(round(self.b - self.a))
            out = f"{self.figure} {fa} -> {fb} ({diff:+d})"
        if self.threshold is not None:
            fails_a = _fails(self.a, self.threshold, self.direction, self.precision)
            fails_b = _fails(self.b, self.threshold, self.direction, self.precision)
            if fails_b and not fails_a:
                out += f" (over the check limit {self.threshold:g})"
            elif fails_a and not fails_b:
                out += f" (back within the check limit {self.threshold:g})"
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "figure": self.figure,
            "a": self.a,
            "b": self.b,
            "delta": self.b - self.a,
            "direction": self.direction,
            "change": self.change,
            "threshold": self.threshold,
            "over": self.over,
        }


@dataclass
class CompareVerdict:
    status: Status
    figures: list[FigureChange] = field(default_factory=list)
    margin: float = 0.05
    config_file: str | None = None

    @property
    def deciding(self) -> list[FigureChange]:
        wanted = "worse" if self.status == "worse" else "better"
        return [f for f in self.figures if f.change == wanted]

    def line(self) -> str:
        """``B is worse than A: MaxVio 0.75 -> 4.60, dead experts 0 -> 32 (+32)``."""
        if self.status == "unchanged":
            shown = ", ".join(f.text() for f in self.figures[:3])
            return f"B is unchanged from A: no check figure moved by more than {self.margin:g}" + (
                f" ({shown})" if shown else ""
            )
        head = f"B is {self.status} than A: " + ", ".join(f.text() for f in self.deciding)
        if self.status == "worse":
            better = [f for f in self.figures if f.change == "better"]
            if better:
                head += "; better: " + ", ".join(f.text() for f in better)
        return head

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "line": self.line(),
            "margin": self.margin,
            "config": self.config_file,
            "figures": [f.to_dict() for f in self.figures],
        }


def _fails(value: float, threshold: float, direction: str, precision: int) -> bool:
    from moediag.checks import should_fail

    return should_fail(value, threshold, direction, precision)  # type: ignore[arg-type]


def _figure(rule: Any, figures: Mapping[str, Any]) -> tuple[float | None, str]:
    if rule.model_only or rule.model_agg == "sum":
        value = (figures.get("model") or {}).get(rule.name)
        return (None if value is None else float(value)), "sum over layers"
    values = [
        float(v[rule.name]) for v in (figures.get("layers") or {}).values() if v.get(rule.name) is not None
    ]
    if not values:
        return None, "worst layer"
    return (max(values) if rule.direction == "max" else min(values)), "worst layer"


def compare_verdict(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], config: Any = None) -> CompareVerdict:
    """The verdict on two ``inspect --json`` documents of traces (A the reference), with a
    :class:`moediag.checks.CheckConfig` (default: the built-in thresholds)."""
    from moediag.checks import RULES, CheckConfig, baseline_figures, round_figure

    config = config or CheckConfig()
    fig_a, fig_b = baseline_figures(doc_a, config), baseline_figures(doc_b, config)
    margin = float(config["baseline_margin"])
    changes: list[FigureChange] = []
    for rule in RULES:
        threshold = config[rule.name]
        if threshold is None or "trace" not in rule.kinds:
            continue
        a, over = _figure(rule, fig_a)
        b, _ = _figure(rule, fig_b)
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            continue
        precision = rule.precision if config["precision"] is None else int(config["precision"])
        allowed = float(math.floor(margin)) if rule.precision == 0 else margin
        ra, rb = round_figure(a, precision)[0], round_figure(b, precision)[0]
        worse_by = (rb - ra) if rule.direction == "max" else (ra - rb)
        tolerance = 1e-9 * max(1.0, abs(ra))
        change: Literal["worse", "better", "same"] = (
            "worse"
            if worse_by > allowed + tolerance
            else "better"
            if -worse_by > allowed + tolerance
            else "same"
        )
        changes.append(
            FigureChange(rule.name, rule.figure, a, b, rule.direction, precision, change, threshold, over)
        )
    if any(c.change == "worse" for c in changes):
        status: Status = "worse"
    elif any(c.change == "better" for c in changes):
        status = "better"
    else:
        status = "unchanged"
    return CompareVerdict(status, changes, margin, getattr(config, "file", None))
