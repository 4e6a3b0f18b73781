"""Counts in words: ``1 token``, ``2 tokens``, ``layer 3 has``, ``layers 0,1 have``, ``0, 3, … (+20 more)``,
``1.3 MB``."""

from __future__ import annotations

from collections.abc import Sequence


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "token")`` -> ``1 token``; ``plural(3, "token")`` -> ``3 tokens``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def layers_have(layers: Sequence[int], sep: str = ",") -> str:
    """``layer 3 has`` or ``layers 0,1 have``."""
    ids = sep.join(map(str, layers))
    return f"layer {ids} has" if len(layers) == 1 else f"layers {ids} have"


def fold(items: Sequence[object], limit: int = 12) -> str:
    """``0, 3, 7, … (+20 more)``: the first ``limit`` items, then how many are left out."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def human_size(n: int) -> str:
    """``46.2 KB``, ``1.3 MB``: a byte count in the unit that keeps it between 1 and 1024 (binary units)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def quantisation(q: object) -> str:
    """A checkpoint summary's ``quantization`` in words: ``fp8; expert projections: fp8 x177`` (one
    count per projection of each MoE layer, not per tensor)."""
    if not isinstance(q, dict):
        return str(q)
    counts = q.get("expert_tensors") or {}
    shown = ", ".join(f"{k} x{v}" for k, v in counts.items()) if isinstance(counts, dict) else str(counts)
    method = q.get("method") or "no quantization_config"
    return f"{method}; expert projections: {shown or 'none'}"
