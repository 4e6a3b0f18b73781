"""A checkpoint's config.json, normalised: one name per MoE setting whatever the family calls it.

Keys are searched at the top level, then in ``text_config``, ``language_config``, ``llm_config`` and
``ffn_config`` (shared/design/checkpoints.md, D2). Values the config leaves out come from the family
table (``score_function`` of DeepSeek-V3 is sigmoid, Switch routes top-1, ...) and say so in
:attr:`NormalisedConfig.sources`. The tensors are the authority on structure; these values are what the
model *says* it is, used to fill in routing settings tensors cannot show (top-k, score function) and to
cross-check the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moediag.checkpoint.config_keys import (
    _SCOPES,
    AUX_KEYS,
    CAPACITY_KEYS,
    EXPERT_I_KEYS,
    GROUP_KEYS,
    HIDDEN_KEYS,
    LAYERS_KEYS,
    MTP_KEYS,
    NUM_EXPERTS_KEYS,
    RENORM_FALSE_FAMILIES,
    RENORM_KEYS,
    RENORM_TRUE_FAMILIES,
    SCALE_KEYS,
    SCORE_KEYS,
    SHARED_I_KEYS,
    SHARED_KEYS,
    SIGMOID_FAMILIES,
    TOP_K_FAMILIES,
    TOP_K_KEYS,
    TOPK_SOFTMAX_FAMILIES,
    Z_KEYS,
)
from moediag.routing import group_score_from_config

__all__ = ["NormalisedConfig", "normalise_config", "SCORE_FUNCTIONS"]

SCORE_FUNCTIONS = ("softmax", "sigmoid", "topk_softmax")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class NormalisedConfig:
    """MoE settings under one name each. ``None`` means neither the config nor the family table says."""

    raw: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    architectures: list[str] = field(default_factory=list)
    family: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    num_experts: int | list[int] | None = None
    top_k: int | list[int] | None = None
    shared_experts: int | None = None
    shared_intermediate_size: int | None = None
    expert_intermediate_size: int | None = None
    norm_topk_prob: bool | None = None
    score_function: str | None = None
    n_group: int | None = None
    topk_group: int | None = None
    group_score: str | None = None  # how a group is scored (moediag.routing.GROUP_SCORES)
    routed_scaling_factor: float | None = None
    aux_loss_coef: float | None = None
    z_loss_coef: float | None = None
    capacity: float | None = None
    mtp_layers: int = 0
    tie_word_embeddings: bool | None = None
    quantization: dict[str, Any] | None = None
    #: normalised name -> the config key it came from ("family default" / "assumed" otherwise)
    sources: dict[str, str] = field(default_factory=dict)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, *keys: str) -> tuple[Any, str | None]:
        """The first key present (not null) in any scope, and its dotted name."""
        for scope in _SCOPES:
            d = self.raw if not scope else self.raw.get(scope)
            if not isinstance(d, dict):
                continue
            for k in keys:
                if d.get(k) is not None:
                    return d[k], (f"{scope}.{k}" if scope else k)
        return None, None

    def per_layer(self, value: int | list[int] | None, layer: int) -> int | None:
        if isinstance(value, list):
            return int(value[layer]) if 0 <= layer < len(value) else None
        return value

    def num_experts_for(self, layer: int) -> int | None:
        return self.per_layer(self.num_experts, layer)

    def top_k_for(self, layer: int) -> int | None:
        return self.per_layer(self.top_k, layer)

    def layers_in(self, stack: str) -> int | None:
        """Number of layers the config gives for a stack (encoder/decoder in encoder-decoder models)."""
        if "encoder" in stack and self.encoder_layers is not None:
            return self.encoder_layers
        if "decoder" in stack and self.decoder_layers is not None:
            return self.decoder_layers
        return self.num_layers

    # -- dense-layer rules ------------------------------------------------------------------------
    def expected_moe(self, stack: str, layer: int) -> bool | None:
        """Whether the config says layer ``layer`` of ``stack`` is MoE (None: the config has no rule)."""
        g = self.get
        if self.num_experts == 0:
            return False
        fam = self.family or ""
        if "encoder" in stack or "decoder" in stack:
            key = "encoder_sparse_step" if "encoder" in stack else "decoder_sparse_step"
            step, _ = g(key)
            if _is_num(step) and fam in ("switch_transformers",):
                step = int(step)
                return (layer % step == 1 or step == 1) if step > 0 else False
            if _is_num(step) and fam in ("nllb-moe", "nllb_moe"):
                step = int(step)
                return (layer + 1) % step == 0 if step > 0 else False
        types, _ = g("mlp_layer_types")
        if isinstance(types, list) and 0 <= layer < len(types):
            return str(types[layer]).lower() in ("sparse", "moe")
        moe_layers, _ = g("moe_layers")
        if isinstance(moe_layers, list):
            return layer in moe_layers
        step, _ = g("interleave_moe_layer_step")
        if _is_num(step) and step > 0:
            return layer % int(step) == int(step) - 1
        first_k, _ = g("first_k_dense_replace", "n_dense_layers")
        freq, _ = g("moe_layer_freq")
        if _is_num(first_k):
            if layer < int(first_k):
                return False
            if _is_num(freq) and int(freq) > 1:
                return layer % int(freq) == 0
            return True
        mlp_only, _ = g("mlp_only_layers")
        sparse_step, _ = g("decoder_sparse_step")
        if isinstance(mlp_only, list) or (_is_num(sparse_step) and "encoder" not in stack):
            if isinstance(mlp_only, list) and layer in mlp_only:
                return False
            if _is_num(sparse_step) and sparse_step > 0:
                return (layer + 1) % int(sparse_step) == 0
            return True
        if freq is not None:
            pattern = _layer_pattern(freq)
            if pattern is not None:
                return bool(pattern[layer]) if layer < len(pattern) else None
            if _is_num(freq) and freq > 0:
                return layer % int(freq) == 0
        frequency, _ = g("moe_layer_frequency")
        if _is_num(frequency) and frequency > 0:
            return (layer + 1) % int(frequency) == 0
        period, _ = g("expert_layer_period")
        if _is_num(period) and period > 0:
            offset, _ = g("expert_layer_offset")
            return layer % int(period) == int(offset or 0)
        interval, _ = g("moe_layer_interval")
        if _is_num(interval) and interval > 0:
            start, _ = g("moe_layer_start_index")
            end, _ = g("moe_layer_end_index")
            end_i = int(end) if _is_num(end) and end >= 0 else (self.num_layers or layer + 1) - 1
            return (layer + 1) % int(interval) == 0 and int(start or 0) <= layer <= end_i
        return None


def _layer_pattern(value: Any) -> list[int] | None:
    """Megatron's ``moe_layer_freq`` as a 0/1 list: a list, or a string like ``[0]*3+[1]*58``."""
    if isinstance(value, list) and all(v in (0, 1) for v in value):
        return [int(v) for v in value]
    if isinstance(value, str):
        s = value.strip().strip("()")
        out: list[int] = []
        for part in s.split("+"):
            part = part.strip()
            m = re.fullmatch(r"\[([01](?:\s*,\s*[01])*)\](?:\s*\*\s*(\d+))?", part)
            if not m:
                return None
            vals = [int(v) for v in m.group(1).split(",")]
            out.extend(vals * int(m.group(2) or 1))
        return out or None
    return None


def _count(v: Any) -> bool:
    """A usable count: a whole number >= 0 (JSON ``2`` or ``2.0``; not ``"2"``, -1, 2.5 or ``true``)."""
    return _is_num(v) and v >= 0 and float(v).is_integer()


def _size(v: Any) -> bool:
    """A usable size: a count above 0."""
    return _count(v) and v > 0


def _int_or_list(v: Any) -> int | list[int] | None:
    if _count(v):
        return int(v)
    if isinstance(v, list) and v and all(_count(x) for x in v):
        vals = [int(x) for x in v]
        return vals[0] if len(set(vals)) == 1 else vals
    return None


def _has_zero(v: int | list[int] | None) -> bool:
    return v == 0 or (isinstance(v, list) and 0 in v)


#: the config's sizes and counts that moediag reads, by what they mean
SIZE_KEYS = {
    "hidden size": HIDDEN_KEYS,
    "layer count": LAYERS_KEYS,
    "expert count": NUM_EXPERTS_KEYS,
    "top-k": TOP_K_KEYS,
    "expert intermediate size": EXPERT_I_KEYS,
}


def unusable_sizes(cfg: NormalisedConfig) -> list[str]:
    """Warnings for sizes the config gives in a form moediag cannot use (``"2"``, 0, -1, 2.5, true):
    each is ignored, as if absent, and the tensors (or the family default) stand in."""
    out = []
    for what, keys in SIZE_KEYS.items():
        v, k = cfg.get(*keys)
        parsed = _int_or_list(v)
        # 0 experts is a dense model; a top-k of 0 only makes sense there; other sizes must be above 0
        allowed_zero = what == "expert count" or (what == "top-k" and _has_zero(cfg.num_experts))
        if k is not None and (parsed is None or (_has_zero(parsed) and not allowed_zero)):
            out.append(
                f"config {k} = {json.dumps(v)[:40]} is not a usable {what} (a positive integer); ignored"
            )
    return out


def _guess_family(raw: dict[str, Any]) -> str | None:
    if "n_activated_experts" in raw and "dim" in raw:
        return "deepseek-native"
    if "num_moe_experts" in raw or "moe_router_topk" in raw:
        return "megatron"
    if "experts_per_token" in raw and "swiglu_limit" in raw:
        return "gpt_oss"  # OpenAI's original release: config.json without model_type
    return None


def normalise_config(raw: dict[str, Any] | None) -> NormalisedConfig:
    """Normalise a parsed config.json (``None`` gives an empty config: everything from tensors)."""
    cfg = NormalisedConfig(raw=dict(raw or {}))
    if not raw:
        return cfg
    src = cfg.sources
    g = cfg.get
    mt = raw.get("model_type")
    cfg.model_type = mt if isinstance(mt, str) else None
    archs = raw.get("architectures")
    cfg.architectures = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    cfg.family = cfg.model_type or _guess_family(raw)
    fam = cfg.family or ""

    def take_int(name: str, keys: Sequence[str]) -> int | None:
        v, k = g(*keys)
        if _size(v) and k:
            src[name] = k
            return int(v)
        return None

    cfg.hidden_size = take_int("hidden_size", HIDDEN_KEYS)
    cfg.num_layers = take_int("num_layers", LAYERS_KEYS)
    if fam in ("switch_transformers",) or "num_decoder_layers" in raw:
        cfg.encoder_layers = cfg.num_layers
        cfg.decoder_layers = take_int("decoder_layers", ("num_decoder_layers",))
    if "encoder_layers" in raw or "decoder_layers" in raw:
        cfg.encoder_layers = take_int("encoder_layers", ("encoder_layers",))
        cfg.decoder_layers = take_int("decoder_layers", ("decoder_layers",))

    v, k = g(*NUM_EXPERTS_KEYS)
    cfg.num_experts = _int_or_list(v)
    if cfg.num_experts is not None and k:
        src["num_experts"] = k
    v, k = g(*TOP_K_KEYS)
    cfg.top_k = _int_or_list(v)
    if _has_zero(cfg.top_k) and not _has_zero(cfg.num_experts):  # experts no token uses: ignored (warned)
        cfg.top_k = None
    if cfg.top_k is not None and k:
        src["top_k"] = k
    elif fam in TOP_K_FAMILIES and cfg.num_experts:
        cfg.top_k = TOP_K_FAMILIES[fam]
        src["top_k"] = "family default"
    cfg.shared_experts = take_int("shared_experts", SHARED_KEYS)
    cfg.shared_intermediate_size = take_int("shared_intermediate_size", SHARED_I_KEYS)
    cfg.expert_intermediate_size = take_int("expert_intermediate_size", EXPERT_I_KEYS)

    # score function
    v, k = g(*SCORE_KEYS)
    if isinstance(v, str) and k:
        s = v.lower()
        if "sigmoid" in s:
            cfg.score_function = "sigmoid"
        elif "softmax" in s:
            pre, _ = g("moe_router_pre_softmax")
            if fam in TOPK_SOFTMAX_FAMILIES or (fam == "megatron" and not pre):
                cfg.score_function = "topk_softmax"
            else:
                cfg.score_function = "softmax"
        if cfg.score_function:
            src["score_function"] = k
    if cfg.score_function is None and cfg.num_experts != 0:
        if fam in SIGMOID_FAMILIES:
            cfg.score_function = "sigmoid"
        elif fam in TOPK_SOFTMAX_FAMILIES or fam == "megatron":
            cfg.score_function = "topk_softmax"
        elif cfg.num_experts is not None or fam:
            cfg.score_function = "softmax"
        if cfg.score_function:
            src["score_function"] = "family default" if fam else "assumed"

    v, k = g(*RENORM_KEYS)
    if v is not None and k:
        cfg.norm_topk_prob = bool(v) if isinstance(v, bool) else _is_num(v) and v > 0
        src["norm_topk_prob"] = k
    elif cfg.score_function == "topk_softmax":
        cfg.norm_topk_prob = True
        src["norm_topk_prob"] = "implied by topk_softmax"
    elif fam in RENORM_TRUE_FAMILIES:
        cfg.norm_topk_prob = True
        src["norm_topk_prob"] = "family default"
    elif fam in RENORM_FALSE_FAMILIES:
        cfg.norm_topk_prob = False
        src["norm_topk_prob"] = "family default"

    for gk, tk in GROUP_KEYS:
        ng, kg = g(gk)
        tg, kt = g(tk)
        if _is_num(ng) and kg:
            cfg.n_group = int(ng)
            src["n_group"] = kg
            if _is_num(tg) and kt:
                cfg.topk_group = int(tg)
                src["topk_group"] = kt
            cfg.group_score = group_score_from_config(kg, cfg.score_function)
            src["group_score"] = f"implied by {kg}" if kg.startswith("moe_router_") else "family default"
            break
    v, k = g(*SCALE_KEYS)
    if _is_num(v) and k:
        cfg.routed_scaling_factor = float(v)
        src["routed_scaling_factor"] = k
    v, k = g(*AUX_KEYS)
    if _is_num(v) and k:
        cfg.aux_loss_coef = float(v)
        src["aux_loss_coef"] = k
    v, k = g(*Z_KEYS)
    if _is_num(v) and k:
        cfg.z_loss_coef = float(v)
        src["z_loss_coef"] = k
    v, k = g(*CAPACITY_KEYS)
    if _is_num(v) and k:
        cfg.capacity = float(v)
        src["capacity"] = k
    v, k = g(*MTP_KEYS)
    if _is_num(v) and k:
        cfg.mtp_layers = int(v)
        src["mtp_layers"] = k
    t = raw.get("tie_word_embeddings")
    cfg.tie_word_embeddings = t if isinstance(t, bool) else None
    q, _ = g("quantization_config")
    if isinstance(q, dict):
        cfg.quantization = q
    return cfg
