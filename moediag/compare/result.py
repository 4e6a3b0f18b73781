"""A comparison of two inputs (:class:`Comparison`) and the figures both kinds share: the Jensen-Shannon
divergence of two load distributions, deltas, and the accuracy shift of one row with its interval.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import torch

from moediag.io import envelope
from moediag.stats.accuracy import newcombe

#: JSON schema version of ``compare --json`` (``meta.format``). History: 1 = first release.
COMPARE_JSON_FORMAT = 1
PATH_SHIFT_TOP = 20


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float | None:
    """Jensen-Shannon divergence, base 2, between two count (or probability) vectors; None if one is empty."""
    sp, sq = float(p.sum()), float(q.sum())
    if sp <= 0 or sq <= 0:
        return None
    a = p.double() / sp
    b = q.double() / sq
    m = 0.5 * (a + b)

    def kl(x: torch.Tensor) -> float:
        nz = x > 0
        return float((x[nz] * torch.log2(x[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _shift_row(ca: int, na: int, cb: int, nb: int) -> dict[str, Any]:
    d, lo, hi = newcombe(ca, na, cb, nb)
    return {
        "tokens_a": na,
        "correct_a": ca,
        "accuracy_a": ca / na if na else None,
        "tokens_b": nb,
        "correct_b": cb,
        "accuracy_b": cb / nb if nb else None,
        "delta": d,
        "delta_ci_low": lo,
        "delta_ci_high": hi,
        "shifted": bool(lo is not None and hi is not None and (lo > 0 or hi < 0)),
    }


@dataclass
class Comparison:
    """The result of a compare: per-layer rows, a summary and notes (what was left out and why)."""

    a: str
    b: str
    inputs: str  # "traces" | "checkpoints"
    layers: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    #: further top-level sections: two checkpoints add ``models``, ``framing``, ``quality``
    #: (moediag.compare.models)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": envelope.meta(
                "compare", COMPARE_JSON_FORMAT, created=self.created, inputs=self.inputs, a=self.a, b=self.b
            ),
            "summary": self.summary | {"notes": list(self.notes)},
            "layers": self.layers,
            "paths": self.paths,
            **self.extra,
        }
