"""Counts in words: ``1 token``, ``2 tokens``, ``layer 3 has``, ``layers 0,1 have``."""

from __future__ import annotations

from collections.abc import Sequence


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "token")`` -> ``1 token``; ``plural(3, "token")`` -> ``3 tokens``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def layers_have(layers: Sequence[int], sep: str = ",") -> str:
    """``layer 3 has`` or ``layers 0,1 have``."""
    ids = sep.join(map(str, layers))
    return f"layer {ids} has" if len(layers) == 1 else f"layers {ids} have"
