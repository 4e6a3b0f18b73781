"""Counts in words (moediag/words.py): no "1 tokens", no "layers 0 have"."""

from __future__ import annotations

from moediag.render.words import layers_have, plural


def test_plural_and_layers_have() -> None:
    assert (
        plural(1, "token") == "1 token"
        and plural(0, "token") == "0 tokens"
        and plural(2, "MoE layer") == "2 MoE layers"
    )
    assert layers_have([0]) == "layer 0 has" and layers_have([0, 2]) == "layers 0,2 have"


def test_quantisation_in_words() -> None:
    """The summary's quantisation dict in words, the same on the terminal and in HTML (it was a raw
    Python dict in the report)."""
    from moediag.render.words import quantisation

    q = {"method": "fp8", "expert_tensors": {"fp8": 177}}
    assert quantisation(q) == "fp8; expert projections: fp8 x177"
    assert quantisation({"method": None, "expert_tensors": {"fp8": 3}}) == (
        "no quantization_config; expert projections: fp8 x3"
    )
