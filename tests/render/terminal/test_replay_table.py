"""The replay headline: MATCH / MISMATCH, and the hint when agreement is too low for the same weights."""

from __future__ import annotations

from typing import Any

from moediag.analysis.verdict import UNRELATED_AGREEMENT, replay_verdict
from moediag.render.terminal.replay_table import headline


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


def test_the_judgement_is_the_library_s() -> None:
    """The renderer prints :func:`moediag.analysis.verdict.replay_verdict`; the levels say what
    ``--require-match`` needs (``mismatch`` fails it, near-ties only do not)."""
    assert replay_verdict(_doc(1.0, 0)).level == "match"
    assert replay_verdict(_doc(0.99, 2, ties=2)).level == "near_ties"
    low = replay_verdict(_doc(UNRELATED_AGREEMENT - 0.01, 99))
    assert low.level == "mismatch" and len(low.reasons) == 2
    doc = _doc(1.0, 0)
    doc["summary"]["match"] = None
    assert replay_verdict(doc).level == "not_compared"
    assert headline(doc) == (replay_verdict(doc).text, "bold")
