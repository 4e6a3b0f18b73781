"""Trace format v1: names, dtypes, shapes and metadata (the contract in docs/trace-format.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from moediag.io import strict_json

FORMAT_NAME = "moediag-trace"
FORMAT_VERSION = "1"
SCORE_FUNCTIONS = ("softmax", "sigmoid", "topk_softmax")

#: layer indices are ASCII decimal without leading zeros (``layers.01.x`` would alias ``layers.1.x``)
LAYER_RE = re.compile(r"^layers\.(0|[1-9][0-9]{0,3})\.([a-z_]+)$")
TOKEN_RE = re.compile(r"^tokens\.([a-z_]+)$")
#: the most experts a layer may claim in metadata when no tensor shows its width (state is O(E) per layer)
MAX_EXPERTS = 1 << 16
_INT_RE = re.compile(r"^[0-9]{1,9}$")

#: per-layer tensors: allowed dtype family, rank, meaning of the first dimension
LAYER_TENSORS: dict[str, tuple[str, int]] = {
    "router_logits": ("float", 2),
    "topk_ids": ("int", 2),
    "topk_weights": ("float", 2),
    "router_input": ("float", 2),
    "selection_bias": ("float", 1),
    "expert_counts": ("int", 2),
}
#: per-layer tensors whose first dimension is the token dimension
PER_TOKEN_LAYER_TENSORS = ("router_logits", "topk_ids", "topk_weights", "router_input")

TOKEN_TENSORS: dict[str, str] = {
    "input_ids": "int",
    "sequence_ids": "int",
    "positions": "int",
    "mask": "bool",
    "correct": "bool",
    "loss": "float",
    "domain": "int",
    "step": "int",
}

#: metadata keys that may be overridden per layer as ``layers.L.<key>``
LAYER_OVERRIDABLE = (
    "num_experts",
    "top_k",
    "score_function",
    "norm_topk_prob",
    "n_group",
    "topk_group",
    "group_score",
)
#: how group-limited routing scores a group (moediag.routing.GROUP_SCORES; absent: top2_sum for sigmoid,
#: max otherwise, what traces before the key meant)
GROUP_SCORES = ("max", "top2_sum", "topk_sum")


@dataclass
class RoutingSpec:
    """How one layer routes: what analysis needs to turn logits into choices."""

    num_experts: int | None = None
    top_k: int | None = None
    score_function: str | None = None
    norm_topk_prob: bool | None = None
    n_group: int | None = None
    topk_group: int | None = None
    group_score: str | None = None


@dataclass
class TraceMeta:
    """The header metadata of a trace, parsed (raw strings kept in ``raw``)."""

    routing: RoutingSpec
    model: str | None = None
    domains: list[str] = field(default_factory=list)
    layer_overrides: dict[int, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    def for_layer(self, layer: int) -> RoutingSpec:
        base = self.routing
        over = self.layer_overrides.get(layer, {})
        return RoutingSpec(**{k: over.get(k, getattr(base, k)) for k in LAYER_OVERRIDABLE})


def _parse_value(key: str, value: str) -> Any:
    """Metadata values are strings; numbers and booleans may also be JSON-encoded."""
    if key in ("num_experts", "top_k", "n_group", "topk_group"):
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':  # a JSON-encoded string of digits
            text = text[1:-1].strip()
        if not _INT_RE.match(text):
            raise ValueError(f"metadata {key}={value[:40]!r} is not an integer")
        number = int(text)
        if number > MAX_EXPERTS:
            raise ValueError(f"metadata {key}={number} exceeds the limit of {MAX_EXPERTS}")
        return number
    if key == "norm_topk_prob":
        v = value.strip().lower()
        if v in ("true", "1"):
            return True
        if v in ("false", "0"):
            return False
        raise ValueError(f"metadata {key}={value!r} is not a boolean")
    if key == "group_score":
        v = value.strip().lower()
        if v not in GROUP_SCORES:
            raise ValueError(f"metadata group_score={value!r} is not one of {', '.join(GROUP_SCORES)}")
        return v
    if key == "score_function":
        v = value.strip().lower()
        if v not in SCORE_FUNCTIONS:
            raise ValueError(f"metadata score_function={value!r} is not one of {', '.join(SCORE_FUNCTIONS)}")
        return v
    return value


def parse_metadata(meta: dict[str, str]) -> TraceMeta:
    """Parse and validate header metadata. Raises ValueError with a user-facing message."""
    fmt = meta.get("format")
    if fmt != FORMAT_NAME:
        raise ValueError(f"not a moediag trace: metadata format={fmt!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"unsupported trace version {version!r}; this moediag reads version {FORMAT_VERSION}"
        )
    routing = RoutingSpec(**{k: _parse_value(k, meta[k]) for k in LAYER_OVERRIDABLE if k in meta})
    overrides: dict[int, dict[str, Any]] = {}
    for key, value in meta.items():
        m = LAYER_RE.match(key)
        loose = re.match(r"^layers\.([^.]*)\.([a-z_]+)$", key)
        if not m and loose and loose.group(2) in LAYER_OVERRIDABLE:
            raise ValueError(
                f"metadata key {key!r}: the layer index must be a plain number (layers.1.{loose.group(2)})"
            )
        if m and m.group(2) in LAYER_OVERRIDABLE:
            overrides.setdefault(int(m.group(1)), {})[m.group(2)] = _parse_value(m.group(2), value)
    domains: list[str] = []
    if "domains" in meta:
        try:
            domains = strict_json.loads(meta["domains"])
        except strict_json.StrictJSONError:
            raise ValueError("metadata domains is not a JSON list of names") from None
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ValueError("metadata domains is not a JSON list of names")
    return TraceMeta(
        routing=routing, model=meta.get("model"), domains=domains, layer_overrides=overrides, raw=dict(meta)
    )


def build_metadata(
    *,
    num_experts: int | None,
    top_k: int | None,
    score_function: str | None = None,
    norm_topk_prob: bool | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
    group_score: str | None = None,
    model: str | None = None,
    domains: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``__metadata__`` dict of a v1 trace (all values strings, as safetensors requires)."""
    meta: dict[str, str] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    for key, value in (
        ("num_experts", num_experts),
        ("top_k", top_k),
        ("n_group", n_group),
        ("topk_group", topk_group),
    ):
        if value is not None:
            meta[key] = str(int(value))
    if score_function is not None:
        if score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS}, got {score_function!r}")
        meta["score_function"] = score_function
    if group_score is not None:
        if group_score not in GROUP_SCORES:
            raise ValueError(f"group_score must be one of {GROUP_SCORES}, got {group_score!r}")
        meta["group_score"] = group_score
    if norm_topk_prob is not None:
        meta["norm_topk_prob"] = "true" if norm_topk_prob else "false"
    if model is not None:
        meta["model"] = model
    if domains is not None:
        meta["domains"] = json.dumps(list(domains))
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta
