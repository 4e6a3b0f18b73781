"""What the figures read from a trace analysis: the rows of a layer selection, loads relative to balanced,
the layer to show by default, and accuracy counts and paths normalised from their JSON shapes.

No matplotlib here, and no judgement: flags such as ``below_overall`` are the analysis' own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from moediag.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from moediag.analysis import TraceAnalysis


def layer_rows(analysis: TraceAnalysis, layer: int | None) -> list[dict[str, Any]]:
    rows = analysis.layers
    if layer is None:
        return rows
    for row in rows:
        if row["layer"] == layer:
            return [row]
    raise UsageError(
        f"layer {layer} is not in the trace (layers: {', '.join(str(r['layer']) for r in rows)})"
    )


def load_ratio(load: Sequence[int]) -> list[float]:
    """Load of each expert relative to the balanced load (share * E; balanced = 1)."""
    total = float(sum(load))
    e = len(load)
    return [0.0 if total == 0 else c / total * e for c in load]


def worst_layer(rows: list[dict[str, Any]]) -> int:
    scored = [r for r in rows if r.get("max_vio") is not None]
    if not scored:
        return int(rows[0]["layer"])
    return int(max(scored, key=lambda r: r["max_vio"])["layer"])


def wilson(hits: float, total: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for hits/total; (0, 1) for total 0."""
    if total <= 0:
        return 0.0, 1.0
    p = hits / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def accuracy_counts(value: Any) -> tuple[list[float], list[float]] | None:
    """(hits, totals) per expert from a layer's ``expert_accuracy`` (issue 7).

    Accepted shapes: ``{"hits": [E], "totals"|"total"|"tokens": [E]}``, or a list of per-expert dicts with
    ``hits`` and ``total``/``tokens`` (optionally ``expert``). Returns None when absent or unreadable.
    """
    if not value:
        return None
    if isinstance(value, dict):
        hits = _first(value, "hits", "correct")
        totals = _first(value, "totals", "total", "tokens", "counts", "count")
        if isinstance(hits, list) and isinstance(totals, list) and len(hits) == len(totals):
            return [float(x or 0) for x in hits], [float(x or 0) for x in totals]
        return None
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        e = max((int(x.get("expert", i)) for i, x in enumerate(value)), default=-1) + 1
        h, t = [0.0] * e, [0.0] * e
        for i, x in enumerate(value):
            j = int(x.get("expert", i))
            h[j] = float(_first(x, "hits", "correct") or 0)
            t[j] = float(_first(x, "total", "totals", "tokens", "count") or 0)
        return h, t
    return None


def path_rows(value: Any) -> list[dict[str, Any]]:
    """Normalised per-path records ``{"path": str, "hits": float, "total": float}`` from a ``paths`` value.

    Accepted: a list of dicts with ``path`` (list of expert ids or a string), ``hits`` and
    ``total``/``tokens``/``count``; or ``{"paths": [...]}``. Most frequent first.
    """
    if isinstance(value, dict):
        value = _first(value, "frequent", "paths", "top", "items")
    if isinstance(value, list) and value and all(isinstance(x, dict) and "frequent" in x for x in value):
        value = next((w["frequent"] for w in value if w.get("frequent")), [])  # windows: the first with paths
    if not isinstance(value, list):
        return []
    out = []
    for x in value:
        if not isinstance(x, dict):
            continue
        path = x.get("path", x.get("experts"))
        label = "→".join(map(str, path)) if isinstance(path, (list, tuple)) else str(path)
        hits = _first(x, "hits", "correct")
        total = _first(x, "total", "totals", "tokens", "count")
        if hits is None or not total:
            continue
        row: dict[str, Any] = {"path": label, "hits": float(hits), "total": float(total)}
        if "below_overall" in x:  # the analysis' own flag, as the tables show it
            row["below"] = bool(x["below_overall"])
        out.append(row)
    return sorted(out, key=lambda r: -r["total"])
