"""Which layers a check reads, and the figure each rule reads from them (shared by a run and a baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moediag.checks.config import CheckConfig, ConfigValueError
from moediag.checks.extract import _path_accuracy
from moediag.checks.gate import Direction, Scope, Status, should_fail
from moediag.checks.keys import Rule
from moediag.checks.report import RuleResult


def input_kind(doc: Mapping[str, Any]) -> str:
    return str((doc.get("meta") or {}).get("kind") or "trace")


def selected_layers(doc: Mapping[str, Any], config: CheckConfig) -> list[Mapping[str, Any]]:
    """The rows of the layers the config selects; raises ConfigValueError for a layer the input lacks."""
    rows = [r for r in doc.get("layers") or [] if not r.get("mtp")]
    wanted = config["layers"]
    if wanted is None:
        return rows
    have = {int(r["layer"]) for r in rows}
    missing = [x for x in wanted if x not in have]
    if missing:
        raise ConfigValueError(
            f"layer {missing[0]} is not in the input (layers: {', '.join(map(str, sorted(have))) or 'none'})"
        )
    return [r for r in rows if int(r["layer"]) in wanted]


def _aggregate(values: list[float], how: str) -> float:
    if how == "sum":
        return float(sum(values))
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)


def model_paths(doc: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """Per-path accuracy rows: ``summary.paths`` (a list of path windows, each with ``frequent`` rows) or a
    top-level ``paths``; None when the input has none."""
    paths = doc.get("paths")
    if paths is None:
        paths = (doc.get("summary") or {}).get("paths")
    if paths is None:
        return None
    windows = [paths] if isinstance(paths, Mapping) else list(paths)
    rows: list[Mapping[str, Any]] = []
    for window in windows:
        if isinstance(window, Mapping) and "frequent" in window:
            rows.extend(window["frequent"] or [])
        elif isinstance(window, Mapping):
            rows.append(window)
    return rows


def rule_figures(
    rule: Rule, doc: Mapping[str, Any], rows: list[Mapping[str, Any]], config: CheckConfig
) -> tuple[dict[int, tuple[float | None, str | None]], tuple[float | None, str | None]]:
    """A rule's figure per selected layer and for the model (value or the reason it is absent)."""
    if rule.model_only:
        return {}, _path_accuracy(model_paths(doc), config)
    per_layer = {int(row["layer"]): rule.extract(row, config) for row in rows}
    values = [v for v, _ in per_layer.values() if v is not None]
    if values:
        model: tuple[float | None, str | None] = (_aggregate(values, rule.model_agg), None)
    elif per_layer:
        model = (None, next(iter(per_layer.values()))[1])
    else:
        model = (None, "the input has no MoE layers")
    return per_layer, model


def judge(
    name: str,
    scope: Scope,
    layer: int | None,
    value: float | None,
    reason: str | None,
    threshold: float,
    direction: Direction,
    precision: int,
    strict: bool,
) -> RuleResult:
    if value is None:
        if strict:
            return RuleResult(
                name,
                scope,
                layer,
                None,
                threshold,
                "fail",
                f"skipped, failed by strict: {reason}",
                direction,
                precision,
            )
        return RuleResult(name, scope, layer, None, threshold, "skip", reason, direction, precision)
    status: Status = "fail" if should_fail(value, threshold, direction, precision) else "pass"
    return RuleResult(name, scope, layer, value, threshold, status, None, direction, precision)
