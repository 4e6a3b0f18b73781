"""Baselines: the figures of a previous run, and a comparison that fails on a regression past a tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from moediag.checks.config import CheckConfig, ConfigValueError
from moediag.checks.figures import input_kind, judge, rule_figures
from moediag.checks.gate import Scope, decimals, round_figure
from moediag.checks.report import RuleOutcome
from moediag.checks.rules import RULES


def baseline_figures(doc: Mapping[str, Any], config: CheckConfig) -> dict[str, Any]:
    """The figures of a previous run: a ``check --format json`` document (its ``figures``) or an
    ``inspect --json`` document (recomputed here with the current settings). Raises ConfigValueError
    for anything else."""
    meta = doc.get("meta") if isinstance(doc, Mapping) else None
    if not isinstance(meta, Mapping):
        raise ConfigValueError("not a moediag JSON document (no 'meta')")
    if meta.get("command") == "check":
        figures = doc.get("figures")
        if not isinstance(figures, Mapping) or "model" not in figures or "layers" not in figures:
            raise ConfigValueError("check document without 'figures'")
        _check_figures(figures)
        return dict(figures) | {"kind": input_kind(doc)}
    if "layers" not in doc:
        raise ConfigValueError("neither a 'check --format json' nor an 'inspect --json' document")
    layers = doc.get("layers") or []
    if not isinstance(layers, list) or not all(isinstance(r, Mapping) and "layer" in r for r in layers):
        raise ConfigValueError("'layers' is not a list of per-layer rows of an 'inspect --json' document")
    everything = CheckConfig(values=dict(config.values) | {"layers": None}, sources=dict(config.sources))
    rows = list(layers)
    result: dict[str, Any] = {"model": {}, "layers": {}, "kind": input_kind(doc)}
    try:
        for rule in RULES:
            per_layer, model = rule_figures(rule, doc, rows, everything)
            result["model"][rule.name] = model[0]
            for layer, (value, _) in per_layer.items():
                result["layers"].setdefault(str(layer), {})[rule.name] = value
        _check_figures(result)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        if isinstance(exc, ConfigValueError):
            raise
        raise ConfigValueError(
            f"figures of an unexpected type in the document ({type(exc).__name__})"
        ) from None
    return result


def _check_figures(figures: Mapping[str, Any]) -> None:
    """A baseline's figures: ``model`` maps rule names to numbers or null, ``layers`` maps layer numbers
    to such maps (a document of another shape is refused rather than compared)."""

    def numbers(table: Any, where: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigValueError(f"figures: {where} is not an object")
        for name, value in table.items():
            ok = value is None or (
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            )
            if not ok:
                raise ConfigValueError(f"figures: {where}.{name} is not a finite number or null")

    numbers(figures.get("model"), "model")
    layers = figures.get("layers")
    if not isinstance(layers, Mapping):
        raise ConfigValueError("figures: layers is not an object")
    for layer, table in layers.items():
        if not str(layer).isdigit() or not str(layer).isascii():
            raise ConfigValueError(f"figures: layer {str(layer)[:20]!r} is not a layer number")
        numbers(table, f"layers.{layer}")


class BaselineMismatchError(ConfigValueError):
    """The baseline does not describe the same kind of input or the same MoE layers."""


def _check_baseline_matches(
    current: Mapping[str, Any], baseline: Mapping[str, Any], config: CheckConfig, kind: str
) -> None:
    base_kind = baseline.get("kind")
    if base_kind and base_kind != kind:
        raise BaselineMismatchError(f"it holds a {base_kind}'s figures, but the input is a {kind}")
    if config["scope"] == "model":
        return
    have = {str(x) for x in current["layers"]}
    base = {str(x) for x in baseline.get("layers") or {}}
    missing = sorted(have - base, key=int)
    extra = sorted(base - have, key=int) if config["layers"] is None else []
    if missing or extra:
        raise BaselineMismatchError(
            f"it covers layers {', '.join(sorted(base, key=int)) or 'none'} and the input "
            f"{', '.join(sorted(have, key=int)) or 'none'}: a baseline must come from the same model "
            "(select common layers with --layers)"
        )


def compare_baseline(
    current: Mapping[str, Any], baseline: Mapping[str, Any], config: CheckConfig, kind: str = "trace"
) -> list[RuleOutcome]:
    """One ``baseline.<rule>`` outcome per figure present in both runs: it fails when the figure is worse
    than the baseline's by more than ``baseline_margin`` (both rounded to the rule's precision first).

    Raises :class:`BaselineMismatchError` when the baseline is of another kind of input or covers other
    MoE layers (a baseline from another model would otherwise compare only the layers in common).
    """
    _check_baseline_matches(current, baseline, config, kind)
    margin = float(config["baseline_margin"])
    scope: Scope = config["scope"]
    outcomes = []
    for rule in RULES:
        base_precision = int(config["precision"]) if config["precision"] is not None else rule.precision
        # counts (precision 0) stay whole: the margin is whole experts or pairs, rounded down
        counts = rule.precision == 0 and config["precision"] is None
        allowed = float(math.floor(margin)) if counts else margin
        precision = base_precision if counts else max(base_precision, decimals(margin))
        pairs: list[tuple[int | None, float | None, float | None]] = []
        if scope == "model" or rule.model_only:
            pairs.append(
                (None, current["model"].get(rule.name), (baseline.get("model") or {}).get(rule.name))
            )
        else:
            base_layers = baseline.get("layers") or {}
            for layer, values in current["layers"].items():
                base = (base_layers.get(str(layer)) or {}).get(rule.name)
                pairs.append((int(layer), values.get(rule.name), base))
        results = []
        for layer, value, base in pairs:
            if value is None or base is None:
                continue
            base_rounded, _ = round_figure(float(base), precision)
            limit = base_rounded + allowed if rule.direction == "max" else base_rounded - allowed
            limit, _ = round_figure(limit, precision)
            result = judge(
                f"baseline.{rule.name}",
                "model" if layer is None else "layer",
                layer,
                float(value),
                None,
                limit,
                rule.direction,
                precision,
                False,
            )
            result.reason = f"baseline {round_figure(float(base), precision)[1]}, margin {allowed:g}"
            results.append(result)
        if results:
            outcomes.append(
                RuleOutcome(
                    f"baseline.{rule.name}",
                    f"{rule.figure} vs baseline",
                    rule.direction,
                    "model" if rule.model_only else scope,
                    None,
                    precision,
                    results,
                    config.sources["baseline_margin"],
                    "baseline",
                )
            )
    return outcomes
