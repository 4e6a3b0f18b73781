"""Running the rules over an ``inspect --json`` document: which layers, which figures, the verdict of each
rule (:func:`run_checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moediag.checks.baseline import compare_baseline
from moediag.checks.config import CheckConfig
from moediag.checks.figures import input_kind, judge, rule_figures, selected_layers
from moediag.checks.gate import Scope
from moediag.checks.report import CheckReport, RuleOutcome
from moediag.checks.rules import RULES


def nothing_to_judge(doc: Mapping[str, Any]) -> str | None:
    """Why an ``inspect --json`` document gives the rules nothing to judge (no MoE layer, no routed token),
    or None. The gate fails closed on such input unless ``allow_empty`` (docs/checks.md)."""
    rows = [r for r in doc.get("layers") or [] if not r.get("mtp")]
    if not rows:
        if input_kind(doc) == "checkpoint":
            return "no MoE layer found (a dense model, or not a checkpoint or trace moediag recognises)"
        return "the input has no MoE layer"
    if input_kind(doc) == "trace" and not any((r.get("assignments") or 0) > 0 for r in rows):
        return "no routed tokens (every token is masked, excluded or empty)"
    return None


class NothingToCheckError(ValueError):
    """The input has nothing the rules could judge; the caller names the file (exit 2)."""


def run_checks(
    doc: Mapping[str, Any],
    config: CheckConfig | None = None,
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str | None = None,
    *,
    allow_empty: bool = False,
) -> CheckReport:
    """Evaluate every enabled rule on an ``inspect --json`` document (and against a baseline's figures).

    Fails closed: input with nothing to judge (:func:`nothing_to_judge`) raises
    :class:`NothingToCheckError` unless ``allow_empty``, so a gate pointed at the wrong file never passes.

    A rule is *disabled* when its threshold is off. A rule enabled only by default whose input kind does
    not match (redundant pairs on a trace) is *not applicable* and left out; set explicitly, it runs and
    is skipped with the reason. ``baseline`` is the dict :func:`baseline_figures` returns.
    """
    config = config or CheckConfig()
    empty = nothing_to_judge(doc)
    if empty is not None and not allow_empty:
        raise NothingToCheckError(f"nothing was checked: {empty} (pass --allow-empty to let that pass)")
    kind = input_kind(doc)
    rows = selected_layers(doc, config)
    scope: Scope = config["scope"]
    strict = bool(config["strict"])
    outcomes: list[RuleOutcome] = []
    disabled: list[str] = []
    not_applicable: list[str] = []
    figures: dict[str, Any] = {"scope": scope, "model": {}, "layers": {}}
    for rule in RULES:
        per_layer, model = rule_figures(rule, doc, rows, config)
        figures["model"][rule.name] = model[0]
        for layer, (value, _) in per_layer.items():
            figures["layers"].setdefault(str(layer), {})[rule.name] = value
        threshold = config[rule.name]
        if threshold is None:
            disabled.append(rule.name)
            continue
        if kind not in rule.kinds and not config.explicit(rule.name):
            not_applicable.append(rule.name)
            continue
        precision = config.precision(rule)
        rule_scope: Scope = "model" if rule.model_only else scope
        if rule_scope == "model":
            results = [
                judge(
                    rule.name, "model", None, model[0], model[1], threshold, rule.direction, precision, strict
                )
            ]
        else:
            results = [
                judge(rule.name, "layer", layer, value, reason, threshold, rule.direction, precision, strict)
                for layer, (value, reason) in per_layer.items()
            ]
            if not results:
                results = [
                    judge(
                        rule.name,
                        "layer",
                        None,
                        None,
                        "the input has no MoE layers",
                        threshold,
                        rule.direction,
                        precision,
                        strict,
                    )
                ]
        outcomes.append(
            RuleOutcome(
                rule.name,
                rule.figure,
                rule.direction,
                rule_scope,
                threshold,
                precision,
                results,
                config.sources[rule.name],
            )
        )
    if baseline is not None:
        outcomes.extend(compare_baseline(figures, baseline, config, kind))
    return CheckReport(
        str((doc.get("meta") or {}).get("path")) if (doc.get("meta") or {}).get("path") else None,
        kind,
        outcomes,
        config,
        figures,
        disabled,
        not_applicable,
        baseline_name,
    )
