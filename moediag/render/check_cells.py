"""One rule outcome of a :class:`~moediag.checks.CheckReport` as plain-text cells (scope, value, threshold,
status word, detail): what the terminal table and the Markdown table both print, in one place."""

from __future__ import annotations

from moediag.checks import RuleOutcome

_WORD = {"pass": "pass", "fail": "FAIL", "skip": "skip"}


def _fold(layers: list[int], limit: int = 6) -> str:
    shown = ", ".join(map(str, layers[:limit]))
    return shown + (f" (+{len(layers) - limit} more)" if len(layers) > limit else "")


def outcome_cells(outcome: RuleOutcome) -> tuple[str, str, str, str, str]:
    """(scope, value, threshold, status word, detail) as plain text; shared by the table and markdown."""
    worst = outcome.worst
    op = "<=" if outcome.direction == "max" else ">="
    value = "-" if worst is None else (worst.shown_value or "-")
    if worst is not None and worst.layer is not None:
        value += f" (layer {worst.layer})"
    if outcome.kind == "baseline":
        threshold = "-" if worst is None else f"{op} {worst.shown_threshold}"
    else:
        threshold = f"{op} {outcome.results[0].shown_threshold if outcome.results else outcome.threshold}"
    detail = ""
    if outcome.status == "fail":
        failed = [r.layer for r in outcome.failures if r.layer is not None]
        strict = [r for r in outcome.failures if r.value is None]
        if failed:
            detail = f"fails in layer{'s' if len(failed) > 1 else ''} {_fold(failed)}"
            if strict:  # --strict failures carry no value: say why, not just where
                detail += f" ({strict[0].reason})"
        elif strict:
            detail = strict[0].reason or ""
        if outcome.kind == "baseline" and worst is not None and worst.reason:
            detail = f"{detail}; {worst.reason}" if detail else worst.reason
    elif outcome.status == "skip":
        detail = outcome.reason or ""
    else:
        skipped = [r.layer for r in outcome.skips if r.layer is not None]
        if skipped:
            plural = "s" if len(skipped) > 1 else ""
            detail = f"skipped in layer{plural} {_fold(skipped)}: {outcome.skips[0].reason}"
        elif outcome.kind == "baseline" and worst is not None:
            detail = worst.reason or ""
    return outcome.scope, value, threshold, _WORD[outcome.status], detail
