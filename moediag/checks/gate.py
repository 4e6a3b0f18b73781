"""The gate: one pure comparison (coverage.py's ``should_fail_under``), tested on both sides of every
boundary: the measured figure is rounded to the rule's precision first, and the message prints exactly
the rounded number that was compared.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal

#: JSON schema version of ``check --format json`` output (``meta.format``). History: 1 = first release.
CHECK_JSON_FORMAT = 1

Direction = Literal["max", "min"]
Status = Literal["pass", "fail", "skip"]
Scope = Literal["layer", "model"]

#: drop policies (and their former names); the total rate a check reads is the same under each
CAPACITY_POLICIES = ("token-order", "highest-weight", "first-choices-first", "position", "probs")
SCOPES = ("layer", "model")


def decimals(number: float) -> int:
    """Decimal places written in ``number`` (``0.25`` -> 2, ``1.0`` -> 0, ``3`` -> 0)."""
    if isinstance(number, int) or float(number).is_integer():
        return 0
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def round_figure(value: float, precision: int) -> tuple[float, str]:
    """``value`` rounded half-up-as-printed to ``precision`` places: (the number compared, its text)."""
    text = f"{value:.{precision}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return float(text), text


def should_fail(value: float, threshold: float, direction: Direction, precision: int) -> bool:
    """Whether ``value`` breaks ``threshold``: ``max`` fails above it, ``min`` fails below it.

    The value is rounded to ``precision`` decimal places before the comparison (as it is printed), so a
    figure shown as equal to the threshold passes. A NaN figure always fails.
    """
    if math.isnan(value):
        return True
    rounded, _ = round_figure(value, precision)
    if direction == "max":
        return rounded > threshold
    return rounded < threshold


def format_threshold(threshold: float, precision: int) -> str:
    return f"{threshold:.{precision}f}"
