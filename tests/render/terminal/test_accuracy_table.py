"""The worst-experts table: its order (flagged, then interval upper end) and the layer-accuracy column."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from moediag.render.terminal.accuracy_table import worst_experts_table


class _Analysis:
    def __init__(self, layers: list[dict[str, Any]]) -> None:
        self.layers = layers


def _expert(expert: int, acc: float, low: float, high: float, below: bool) -> dict[str, Any]:
    return {"expert": expert, "tokens": 100, "accuracy": acc, "ci_low": low, "ci_high": high,
            "below_overall": below, "mean_loss": 1.0}  # fmt: skip


def _text(table: Any) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    return buf.getvalue()


def test_order_and_one_layer_accuracy_in_the_caption() -> None:
    experts = [
        _expert(0, 0.10, 0.00, 0.60, False),  # few tokens, wide interval: lowest accuracy, not surely low
        _expert(1, 0.30, 0.25, 0.35, True),
        _expert(2, 0.40, 0.35, 0.45, False),
    ]
    layers = [{"layer": 0, "accuracy": 0.5, "expert_accuracy": experts}]
    table = worst_experts_table(_Analysis(layers))  # type: ignore[arg-type]
    assert table is not None
    text = _text(table)
    order = [line.split("│")[2].strip() for line in text.splitlines() if line.startswith("│")]
    assert order == ["1", "2", "0"]
    assert "layer acc." not in text and "50.0% in every layer shown" in text


def test_layer_accuracy_column_when_layers_differ() -> None:
    layers = [
        {"layer": 0, "accuracy": 0.5, "expert_accuracy": [_expert(0, 0.3, 0.2, 0.4, True)]},
        {"layer": 1, "accuracy": 0.6, "expert_accuracy": [_expert(0, 0.4, 0.3, 0.5, True)]},
    ]
    text = _text(worst_experts_table(_Analysis(layers)))  # type: ignore[arg-type]
    assert "layer acc." in text and "every layer shown" not in text
