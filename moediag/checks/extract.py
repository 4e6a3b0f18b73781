"""What each rule reads from one row of an ``inspect --json`` document: (value, None), or (None, why the
figure is absent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moediag.checks.config import CheckConfig

import math
from collections.abc import Callable, Mapping
from typing import Any

from moediag.checks.keys import Extractor


def _ratio(name: str, needs: str) -> Extractor:
    def extract(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
        value = row.get(name)
        if value is None:
            return None, needs_reason(row, needs)
        return float(value), None

    return extract


def needs_reason(row: Mapping[str, Any], needs: str) -> str:
    source = row.get("source")
    return f"{needs} (this layer has {source})" if source else needs


def _expected_load(row: Mapping[str, Any]) -> float | None:
    assignments = row.get("assignments")
    experts = row.get("num_experts")
    if assignments is None or not experts:
        return None
    return float(assignments) / float(experts)


def _expert_list(name: str) -> Extractor:
    def extract(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
        experts = row.get(name)
        if experts is None:
            return None, "needs expert loads"
        expected = _expected_load(row)
        floor = float(config["min_expected_load"])
        if expected is not None and expected < floor:
            return None, (
                f"too few tokens to call an expert {name.split('_')[0]}: {expected:.1f} expected "
                f"assignments per expert < min_expected_load {floor:g}"
            )
        return float(len(experts)), None

    return extract


def _drop_rate(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    rates = row.get("drop_rate")
    if rates is None:
        return None, needs_reason(row, "needs per-token routing (top-k ids or logits)")
    policy = str(config["drop_policy"])
    cf = float(config["capacity_factor"])
    # the total drop rate is the same under every policy (documents before it: per policy)
    by_cf = row.get("drop_rate_total") or rates.get(policy)
    if by_cf is None:
        return None, f"no drop rates for policy {policy!r}"
    for key, rate in by_cf.items():
        if math.isclose(float(key), cf):
            if rate is None:
                return None, f"policy {policy!r} needs top-k weights or logits"
            return float(rate), None
    return None, f"capacity factor {cf:g} was not analysed (have {', '.join(by_cf)})"


def _min_accuracy(key: str, what: str) -> Callable[[Any, CheckConfig], tuple[float | None, str | None]]:
    def extract(entries: Any, config: CheckConfig) -> tuple[float | None, str | None]:
        if entries is None:
            return None, f"needs {key} (a trace with tokens.correct)"
        if key == "paths" and not any(e.get("accuracy") is not None for e in entries):
            return None, "needs paths with accuracy (a trace with tokens.correct)"
        floor = int(config["accuracy_min_tokens"])
        accs = [
            float(e["accuracy"])
            for e in entries
            if e.get("accuracy") is not None and int(e.get("tokens") or 0) >= floor
        ]
        if not accs:
            return None, f"no {what} has at least accuracy_min_tokens={floor} tokens"
        return min(accs), None

    return extract


_expert_accuracy = _min_accuracy("expert_accuracy", "expert")
_path_accuracy = _min_accuracy("paths", "path")


def _layer_expert_accuracy(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    return _expert_accuracy(row.get("expert_accuracy"), config)


def _redundant_pairs(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    pairs = row.get("redundant_pairs")
    if pairs is None:
        return None, str(
            row.get("weights_note") or "needs expert weights (a checkpoint inspected with weights)"
        )
    return float(len(pairs)), None


def bias_spread(stats: Any) -> float | None:
    """max - min of a selection-bias summary (``{"min", "max", ...}``, a ``spread``, or the raw list)."""
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        if stats.get("spread") is not None:
            return float(stats["spread"])
        if stats.get("max") is not None and stats.get("min") is not None:
            return float(stats["max"]) - float(stats["min"])
        return None
    values = [float(x) for x in stats]
    return max(values) - min(values) if values else None


def _bias_spread(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    stats = row.get("bias", row.get("selection_bias"))
    spread = bias_spread(stats)
    if spread is None:
        if isinstance(stats, Mapping) and stats.get("nonfinite"):
            return None, "the selection bias holds only NaN or infinite values (max_nonfinite fails them)"
        return None, "the model has no selection bias in this layer"
    return spread, None


def _nonfinite(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    found = row.get("nonfinite")
    if found is None:
        return None, "needs the weights (a checkpoint inspected with weights)"
    return float(found.get("total", 0)), None
