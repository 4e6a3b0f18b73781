"""The replay headline: MATCH / MISMATCH, and the hint when agreement is too low for the same weights."""

from __future__ import annotations

from typing import Any

from moediag.render.terminal.replay_table import UNRELATED_AGREEMENT, headline


def _doc(agreement: float, mismatched: int, ties: int = 0) -> dict[str, Any]:
    summary = {"layers": 2, "tokens": 100, "match": mismatched == 0, "topk_agreement": agreement,
               "mismatched_tokens": mismatched, "mismatched_near_ties": ties}  # fmt: skip
    return {"summary": summary, "meta": {"device": "cpu", "dtype": "float32"}}


def test_low_agreement_asks_whether_the_trace_belongs_to_the_checkpoint() -> None:
    text, style = headline(_doc(UNRELATED_AGREEMENT - 0.01, 99))
    assert text.startswith("MISMATCH") and "recorded from this checkpoint?" in text and style == "bold red"
    text, style = headline(_doc(0.99, 2, ties=2))  # near-ties only: dtype noise, no hint
    assert "recorded from this checkpoint" not in text and style == "bold yellow"
    assert headline(_doc(1.0, 0))[0].startswith("MATCH")
