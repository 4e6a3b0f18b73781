"""Finding the routers of a running model by module structure, and how each family routes.

A router is a module that directly owns a 2-D ``weight`` of shape ``[E, H]`` (``E > 1``) and is named
``gate``, ``router``, ``router.layer``, ``router.classifier`` or ``gate.wg`` inside an MoE block, i.e. a
block that also holds ``experts`` (or ``local_experts``). This covers every transformers 5.x family
(``mlp.gate`` for Mixtral, Qwen-MoE, OLMoE, DeepSeek; ``mlp.router`` for GPT-OSS;
``block_sparse_moe.router`` for Granite; ``ffn.router.layer`` for DBRX) as well as older transformers
releases whose gates are plain ``nn.Linear`` modules. Shared-expert gates (``shared_expert_gate``,
``[1, H]``), ``gate_proj`` and attention mixtures are not routers.

The layer index is the model's own decoder layer number (the last ``layers.N`` / ``blocks.N`` / ``h.N``
in the module path), so dense layers that are skipped keep the true numbering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moediag.checkpoint.config_keys import RENORM_TRUE_FAMILIES, TOPK_SOFTMAX_FAMILIES
from moediag.checkpoint.config_keys import SIGMOID_FAMILIES as CHECKPOINT_SIGMOID_FAMILIES
from moediag.errors import UnsupportedLayoutError
from moediag.routing import group_score_from_config
from moediag.trace.schema import build_metadata

#: module-path suffixes that name a router (the module that owns the weight)
ROUTER_SUFFIXES: tuple[tuple[str, ...], ...] = (
    ("gate",),
    ("router",),
    ("router", "layer"),
    ("router", "classifier"),
    ("gate", "wg"),
)
#: children of an MoE block that hold the experts
EXPERT_CONTAINERS = ("experts", "local_experts")
LAYER_INDEX_RE = re.compile(r"(?:^|\.)(?:layers|blocks|block|h)\.(\d+)(?=\.|$)")
#: attributes that hold a selection-only bias, on the router or on its MoE block
SELECTION_BIAS_ATTRS = ("e_score_correction_bias", "expert_bias")

#: model_type -> score function and renormalisation: one table for the whole tool, in
#: checkpoint.config (shared/design/checkpoints.md); everything else is softmax. Families that always
#: renormalise the top-k weights have no config key for it.
SIGMOID_FAMILIES = CHECKPOINT_SIGMOID_FAMILIES
RENORMALISING_FAMILIES = RENORM_TRUE_FAMILIES
TOP_K_KEYS = (
    "num_experts_per_tok",
    "experts_per_token",
    "moe_top_k",
    "num_selected_experts",
    "moe_k",
    "top_k",
)


@dataclass
class RouterSite:
    """One router found in a model: where it is and what it routes."""

    layer: int
    name: str
    module: nn.Module
    block: nn.Module
    num_experts: int
    hidden_size: int
    top_k: int | None

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        return b if isinstance(b, torch.Tensor) and b.numel() == self.num_experts else None

    def selection_bias_tensor(self) -> torch.Tensor | None:
        """The model's own selection-only bias tensor (DeepSeek-V3 ``e_score_correction_bias``), detached
        and flattened to [E] but not copied: it follows the model as training moves it."""
        for owner in (self.module, self.block, getattr(self.module, "moe_statics", None)):
            if owner is None:
                continue
            for attr in SELECTION_BIAS_ATTRS:
                t = getattr(owner, attr, None)
                if isinstance(t, torch.Tensor) and t.numel() == self.num_experts:
                    return t.detach().reshape(-1)
        return None

    def selection_bias(self) -> torch.Tensor | None:
        """A float32 CPU copy of the selection-only bias, if any."""
        t = self.selection_bias_tensor()
        return None if t is None else t.float().cpu().clone()


def _text_config(config: Any) -> Any:
    if config is None:
        return None
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # pragma: no cover - odd configs
            return config
    return config


def _config_value(config: Any, *keys: str) -> Any:
    if config is None:
        return None
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    ffn = getattr(config, "ffn_config", None)  # DBRX keeps its MoE keys nested
    if ffn is not None:
        for key in keys:
            value = ffn.get(key) if isinstance(ffn, dict) else getattr(ffn, key, None)
            if value is not None:
                return value
    return None


def _is_router_path(parts: list[str]) -> int:
    """How many trailing path parts name the router (0 = not a router name)."""
    for suffix in sorted(ROUTER_SUFFIXES, key=len, reverse=True):
        if len(parts) > len(suffix) and tuple(parts[-len(suffix) :]) == suffix:
            return len(suffix)
    return 0


def find_routers(model: nn.Module, *, top_k: int | None = None) -> list[RouterSite]:
    """Every router of ``model``, ordered by layer. Empty when the model has no MoE layer."""
    config = _text_config(getattr(model, "config", None))
    config_k = _config_value(config, *TOP_K_KEYS)
    modules = dict(model.named_modules())
    sites: list[RouterSite] = []
    for name, module in modules.items():
        weight = module._parameters.get("weight")
        if weight is None or weight.dim() != 2 or weight.shape[0] < 2:
            continue
        parts = name.split(".")
        n = _is_router_path(parts)
        if not n:
            continue
        if any("attn" in p or "attention" in p for p in parts):
            continue
        block_name = ".".join(parts[:-n])
        block = modules.get(block_name)
        if block is None or not any(hasattr(block, c) for c in EXPERT_CONTAINERS):
            continue
        matches = LAYER_INDEX_RE.findall(block_name)
        layer = int(matches[-1]) if matches else -1
        k = top_k
        if k is None:
            for owner in (module, block):
                for attr in ("top_k", "num_experts_per_tok"):
                    v = getattr(owner, attr, None)
                    if isinstance(v, int) and not isinstance(v, bool):
                        k = v
                        break
                if k is not None:
                    break
        if k is None and isinstance(config_k, int):
            k = config_k
        sites.append(
            RouterSite(
                layer=layer,
                name=name,
                module=module,
                block=block,
                num_experts=int(weight.shape[0]),
                hidden_size=int(weight.shape[1]),
                top_k=k,
            )
        )
    if any(s.layer < 0 for s in sites):  # no layer numbers in the paths: number routers in module order
        for i, s in enumerate(sites):
            s.layer = i
    seen: dict[int, str] = {}
    for s in sites:
        if s.layer in seen:
            raise UnsupportedLayoutError(
                f"two routers claim layer {s.layer} ({seen[s.layer]} and {s.name}); models with several "
                "layer stacks (encoder-decoder) are not supported by record"
            )
        seen[s.layer] = s.name
    return sorted(sites, key=lambda s: s.layer)


@dataclass
class RoutingInfo:
    """What the trace header says about routing, derived from the config and the routers found."""

    num_experts: int
    top_k: int | None
    score_function: str
    norm_topk_prob: bool | None
    n_group: int | None
    topk_group: int | None
    group_score: str | None
    model_type: str | None
    extra: dict[str, Any]
    layer_overrides: dict[str, str]

    def metadata(
        self, *, model: str | None, domains: list[str] | None, extra: dict[str, Any]
    ) -> dict[str, str]:
        """The trace metadata of a recording with this routing (``extra`` is stored as given)."""
        return build_metadata(
            num_experts=self.num_experts,
            top_k=self.top_k,
            score_function=self.score_function,
            norm_topk_prob=self.norm_topk_prob,
            n_group=self.n_group,
            topk_group=self.topk_group,
            group_score=self.group_score,
            model=model,
            domains=domains,
            extra=extra,
        )


def routing_info(
    model: nn.Module, sites: list[RouterSite], *, score_function: str | None = None
) -> RoutingInfo:
    """Map the model's family and config onto trace metadata (score function, groups, renormalisation)."""
    config = _text_config(getattr(model, "config", None))
    model_type = getattr(config, "model_type", None)
    extra: dict[str, Any] = {}
    if score_function is None:
        explicit = _config_value(config, "scoring_func", "score_func", "moe_router_score_function")
        if model_type in TOPK_SOFTMAX_FAMILIES:
            score_function = "topk_softmax"
        elif explicit in ("sigmoid", "softmax"):
            score_function = str(explicit)
        elif model_type in SIGMOID_FAMILIES:
            score_function = "sigmoid"
        else:
            score_function = "softmax"
            if model_type is not None and not _known_softmax(model_type):
                extra["score_function_assumed"] = True
    norm = _config_value(config, "norm_topk_prob")
    if norm is None and model_type in RENORMALISING_FAMILIES:
        norm = True
    if score_function == "topk_softmax":
        norm = None
    group_keys = ("n_group", "n_expert_groups", "moe_router_num_groups")
    n_group = _config_value(config, *group_keys)
    group_key = next((key for key in group_keys if _config_value(config, key) is not None), None)
    topk_group = _config_value(config, "topk_group", "n_limited_groups", "moe_router_group_topk")
    method = _config_value(config, "topk_method")
    use_groups = isinstance(n_group, int) and isinstance(topk_group, int)
    if use_groups and (model_type or "").startswith("deepseek_v2") and method != "group_limited_greedy":
        use_groups = False
    if use_groups and score_function != "sigmoid" and method is None:
        use_groups = False
    scale = _config_value(config, "routed_scaling_factor", "route_scale")
    if scale is not None:
        extra["routed_scaling_factor"] = float(scale)
    first = sites[0]
    overrides: dict[str, str] = {}
    for s in sites:
        if s.num_experts != first.num_experts:
            overrides[f"layers.{s.layer}.num_experts"] = str(s.num_experts)
        if s.top_k != first.top_k and s.top_k is not None:
            overrides[f"layers.{s.layer}.top_k"] = str(s.top_k)
    return RoutingInfo(
        num_experts=first.num_experts,
        top_k=first.top_k,
        score_function=score_function,
        norm_topk_prob=None if norm is None else bool(norm),
        n_group=int(n_group) if use_groups else None,
        topk_group=int(topk_group) if use_groups else None,
        group_score=group_score_from_config(group_key, score_function) if use_groups else None,
        model_type=model_type,
        extra=extra,
        layer_overrides=overrides,
    )


_SOFTMAX_FAMILIES = frozenset(
    {
        "mixtral",
        "minimax",
        "phimoe",
        "qwen2_moe",
        "qwen3_moe",
        "qwen3_next",
        "qwen3_omni_moe",
        "qwen3_5_moe_text",
        "olmoe",
        "flex_olmo",
        "dbrx",
        "jamba",
        "deepseek_v2",
        "hunyuan_v1_moe",
        "ernie4_5_moe",
        "lfm2_moe",
        "longcat_flash",
        "switch_transformers",
        "nllb-moe",
        "qwen3_vl_moe",
    }
)


def _known_softmax(model_type: str) -> bool:
    return model_type in _SOFTMAX_FAMILIES
