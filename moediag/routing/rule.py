"""What a routing rule says about a layer's router: score function, k, group limits (the spec)."""

from __future__ import annotations

from typing import Protocol

SCORE_FUNCTIONS = ("softmax", "sigmoid", "topk_softmax")


class RoutingRule(Protocol):
    """What :func:`route` needs to know about a layer's router (trace ``RoutingSpec`` and checkpoint
    ``RouterSpec`` both qualify)."""

    @property
    def top_k(self) -> int | None: ...
    @property
    def score_function(self) -> str | None: ...
    @property
    def norm_topk_prob(self) -> bool | None: ...
    @property
    def n_group(self) -> int | None: ...
    @property
    def topk_group(self) -> int | None: ...
    @property
    def group_score(self) -> str | None: ...


def grouped(rule: RoutingRule) -> bool:
    """True when the rule routes within ``topk_group`` of ``n_group`` expert groups."""
    return bool(rule.n_group and rule.topk_group and rule.n_group > 1)


def score_function_of(spec: RoutingRule) -> str:
    """The rule's score function, checked against :data:`SCORE_FUNCTIONS`."""
    sf = spec.score_function
    if sf not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown score function {sf!r}")
    return sf


def top_k_of(spec: RoutingRule, top_k: int | None) -> int:
    """``top_k`` when given, else the rule's k; ValueError when neither is known."""
    k = spec.top_k if top_k is None else top_k
    if k is None:
        raise ValueError("top_k unknown: pass top_k or a spec with one")
    return int(k)
