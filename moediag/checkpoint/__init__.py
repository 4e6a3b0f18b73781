"""Checkpoint inspection from safetensors alone: structure, parameter counts, router and expert health.

Library entry points (no CLI or rich needed):

* :func:`analyze_checkpoint` -> :class:`CheckpointAnalysis` (``.to_dict()`` is the ``--json`` contract)
* :func:`is_checkpoint` tells a checkpoint from a moediag trace
* :func:`router_specs` / :func:`load_router_weight`: per-layer router descriptions for replay
* :func:`open_inventory`, :func:`normalise_config`, :func:`detect_layout`, :func:`count_params`: the steps
"""

from __future__ import annotations

from moediag.checkpoint.analysis import (
    FORMAT,
    CheckpointAnalysis,
    LayerResult,
    analyze_checkpoint,
    check_weights,
)
from moediag.checkpoint.config import NormalisedConfig, normalise_config
from moediag.checkpoint.inventory import Inventory, TensorRef, is_checkpoint, open_inventory
from moediag.checkpoint.layouts import ExpertMatrix, Layout, MoEBlock, detect_layout, split_layer
from moediag.checkpoint.params import ParamCounts, count_params
from moediag.checkpoint.routers import (
    RouterSpec,
    load_router_bias,
    load_router_weight,
    load_selection_bias,
    router_specs,
)
from moediag.checkpoint.similarity import ExpertSimilarity, expert_similarity
from moediag.checkpoint.weights import bias_stats, router_stats

__all__ = [
    "FORMAT",
    "CheckpointAnalysis",
    "ExpertMatrix",
    "ExpertSimilarity",
    "Inventory",
    "LayerResult",
    "Layout",
    "MoEBlock",
    "NormalisedConfig",
    "ParamCounts",
    "RouterSpec",
    "TensorRef",
    "analyze_checkpoint",
    "bias_stats",
    "check_weights",
    "count_params",
    "detect_layout",
    "expert_similarity",
    "is_checkpoint",
    "load_router_bias",
    "load_router_weight",
    "load_selection_bias",
    "normalise_config",
    "open_inventory",
    "router_specs",
    "router_stats",
    "split_layer",
]
