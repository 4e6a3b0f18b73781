"""Results: one comparison (:class:`RuleResult`), a rule over its layers (:class:`RuleOutcome`), and the
report of a run (:class:`CheckReport`), with its exit code and JSON document.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Literal

from moediag.checks.config import CheckConfig
from moediag.checks.gate import CHECK_JSON_FORMAT, Direction, Scope, Status, format_threshold, round_figure
from moediag.errors import ExitCode


@dataclass
class RuleResult:
    """One comparison: a rule on one layer (``scope="layer"``) or on the model (``scope="model"``)."""

    name: str
    scope: Scope
    layer: int | None
    value: float | None
    threshold: float | None
    status: Status
    reason: str | None = None
    direction: Direction = "max"
    precision: int = 3

    @property
    def shown_value(self) -> str | None:
        return None if self.value is None else round_figure(self.value, self.precision)[1]

    @property
    def shown_threshold(self) -> str | None:
        return None if self.threshold is None else format_threshold(self.threshold, self.precision)

    @property
    def where(self) -> str:
        return "model" if self.layer is None else f"layer {self.layer}"

    def message(self) -> str:
        """``layer 3: MaxVio 1.520 > 1.000`` -- the same rounded numbers that were compared."""
        if self.status == "skip" or self.value is None:
            return f"{self.where}: {self.name} skipped: {self.reason}"
        op = {("max", "fail"): ">", ("max", "pass"): "<=", ("min", "fail"): "<", ("min", "pass"): ">="}[
            (self.direction, self.status)
        ]
        text = f"{self.where}: {self.name} {self.shown_value} {op} {self.shown_threshold}"
        return f"{text} ({self.reason})" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "value": self.value,
            "shown": self.shown_value,
            "threshold": self.threshold,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class RuleOutcome:
    """A rule's results over its scope; failed if any failed, skipped if all skipped."""

    name: str
    figure: str
    direction: Direction
    scope: Scope
    threshold: float | None
    precision: int
    results: list[RuleResult]
    source: str = "default"
    kind: Literal["threshold", "baseline"] = "threshold"

    @property
    def status(self) -> Status:
        statuses = {r.status for r in self.results}
        if "fail" in statuses:
            return "fail"
        if "pass" in statuses:
            return "pass"
        return "skip"

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def skips(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == "skip"]

    @property
    def worst(self) -> RuleResult | None:
        """The result that decides the row: the worst failing one, else the worst measured one."""
        measured = [r for r in self.results if r.value is not None]
        pool = [r for r in measured if r.status == "fail"] or measured
        if not pool:
            return None
        if self.kind == "baseline":
            return max(
                pool,
                key=lambda r: (
                    (r.value or 0.0) - (r.threshold or 0.0)
                    if self.direction == "max"
                    else (r.threshold or 0.0) - (r.value or 0.0)
                ),
            )
        return (
            max(pool, key=lambda r: r.value or 0.0)
            if self.direction == "max"
            else min(pool, key=lambda r: r.value or 0.0)
        )

    @property
    def reason(self) -> str | None:
        if self.status == "skip" and self.results:
            return self.results[0].reason
        return None

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "rule": self.name,
            "kind": self.kind,
            "figure": self.figure,
            "direction": self.direction,
            "scope": self.scope,
            "threshold": self.threshold,
            "precision": self.precision,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "worst": None if worst is None else worst.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class CheckReport:
    """Every rule's outcome for one input, and the figures a later run can use as its baseline."""

    path: str | None
    kind: str
    outcomes: list[RuleOutcome]
    config: CheckConfig
    figures: dict[str, Any]
    disabled: list[str]
    not_applicable: list[str]
    baseline: str | None = None
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def failed(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    @property
    def status(self) -> Literal["pass", "fail"]:
        return "fail" if self.failed else "pass"

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.CHECK_FAILED if self.failed else ExitCode.OK

    def verdict(self) -> str:
        n = len(self.outcomes)
        skipped = sum(1 for o in self.outcomes if o.status == "skip")
        skip_text = f", {skipped} skipped" if skipped else ""
        if self.failed:
            names = ", ".join(o.name for o in self.failed)
            return f"FAIL: {len(self.failed)} of {n} rules failed ({names}){skip_text}"
        return f"PASS: {n - skipped} of {n} rules passed{skip_text}"

    def frame(self) -> Any:
        """One row per (rule, layer) result, as a pandas DataFrame
        (:func:`moediag.analysis.frames.check_frame`)."""
        from moediag.analysis.frames import check_frame

        return check_frame(self)

    def to_dict(self) -> dict[str, Any]:
        from moediag.io import envelope

        return {
            "meta": envelope.meta(
                self.kind,
                CHECK_JSON_FORMAT,
                created=self.created,
                command="check",
                path=self.path,
                config=self.config.to_dict(),
                config_sources=dict(self.config.sources),
                config_file=self.config.file,
                baseline=self.baseline,
            ),
            "status": self.status,
            "exit_code": int(self.exit_code),
            "verdict": self.verdict(),
            "rules": [o.to_dict() for o in self.outcomes],
            "disabled": list(self.disabled),
            "not_applicable": list(self.not_applicable),
            "figures": self.figures,
        }
