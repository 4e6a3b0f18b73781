"""The report's checkpoint part, readable: the checkpoint result (``to_dict()`` of
:func:`moediag.checkpoint.analyze_checkpoint`) grouped and worded for people -- model, routing, layers,
parameters, weights -- instead of every key of the dict; values the checkpoint does not have are left out
(no ``n group —``), parameter counts are given in millions or billions beside the exact count, and the
per-layer table shows a fixed set of columns that fits the page (tensor names go into tooltips).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from html import escape as e
from typing import Any

from moediag.render.words import human_size, quantisation

Row = tuple[str, str]


def _count(n: Any) -> str:
    """``870,976 (0.87 M)``; ``1,234,567,890 (1.23 B)``."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return str(n)
    n = int(n)
    if n >= 10**9:
        return f"{n:,} ({n / 1e9:.2f} B)"
    if n >= 10**5:
        return f"{n / 1e6:.2f} M ({n:,})"
    return f"{n:,}"


def _size(n: Any) -> str:
    return human_size(int(n)) if isinstance(n, (int, float)) else str(n)


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _layers_list(v: Any) -> str:
    if not isinstance(v, list) or not v:
        return "none"
    if v == list(range(v[0], v[0] + len(v))):
        return f"{len(v)} ({v[0]}–{v[-1]})" if len(v) > 1 else f"1 ({v[0]})"
    return f"{len(v)} ({', '.join(map(str, v[:12]))}{', …' if len(v) > 12 else ''})"


def _share(part: Any, whole: Any) -> str:
    if isinstance(part, (int, float)) and isinstance(whole, (int, float)) and whole:
        return f" — {100 * part / whole:.1f}% of all"
    return ""


def _pick(source: Mapping[str, Any], spec: list[tuple[str, str, Callable[[Any], str]]]) -> list[Row]:
    """(label, text) for each key the checkpoint has a value for (None and absent keys are left out)."""
    out = []
    for key, label, show in spec:
        v = source.get(key)
        if v is None or v == []:
            continue
        out.append((label, e(show(v))))
    return out


def summary_groups(doc: Mapping[str, Any]) -> list[tuple[str, list[Row]]]:
    """The checkpoint's facts in groups a reader looks for, each a list of (label, escaped text)."""
    meta = doc.get("meta") or {}
    s = doc.get("summary") or {}
    model = _pick(
        meta,
        [
            ("path", "path", str),
            ("files", "safetensors files", str),
            ("tensors", "tensors", lambda v: f"{v:,}"),
            ("bytes", "size on disk", _size),
        ],
    )
    model[1:1] = _pick(
        s,
        [
            ("family", "family", str),
            ("model_type", "model type", str),
            ("architectures", "architectures", lambda v: ", ".join(map(str, v))),
        ],
    )
    routing = _pick(
        s,
        [
            ("num_experts", "routed experts per layer", str),
            ("top_k", "experts per token (top-k)", str),
            ("shared_experts", "shared experts", str),
            ("score_function", "score function", str),
            ("norm_topk_prob", "top-k weights renormalised", _yes),
            ("n_group", "expert groups", str),
            ("topk_group", "groups chosen per token", str),
            ("routed_scaling_factor", "routed scaling factor", lambda v: f"{v:g}"),
            ("selection_bias", "selection bias (e_score_correction_bias)", _yes),
            ("router_bias", "router logit bias", _yes),
            ("expert_intermediate_size", "expert FFN width", str),
            ("hidden_size", "hidden size", str),
        ],
    )
    stacks = s.get("stacks") or []
    layers: list[Row] = []
    if len(stacks) == 1:
        layers = _pick(
            stacks[0],
            [
                ("moe_layers", "MoE layers", _layers_list),
                ("dense_layers", "dense layers", _layers_list),
                ("mtp_layers", "multi-token-prediction layers", _layers_list),
            ],
        )
    else:
        layers = _pick(
            s,
            [
                ("moe_layers", "MoE layers", str),
                ("dense_layers", "dense layers", str),
                ("mtp_layers", "multi-token-prediction layers", str),
            ],
        )
        for st in stacks:
            layers.append((f"stack {e(str(st.get('name')))}", e(_layers_list(st.get("moe_layers")) + " MoE")))
    total = s.get("total_params")
    params = _pick(
        s,
        [
            ("total_params", "total", _count),
            ("active_params", "active per token", lambda v: _count(v) + _share(v, total)),
            ("expert_params", "routed experts", lambda v: _count(v) + _share(v, total)),
            ("shared_expert_params", "shared experts", _count),
            ("router_params", "routers", _count),
            ("embedding_params", "embeddings", _count),
            ("non_expert_params", "everything else (attention, norms, dense FFN)", _count),
            ("mtp_params", "multi-token prediction", _count),
            ("quantization", "quantisation", quantisation),
        ],
    )
    dense = s.get("dense_equivalent") or {}
    if isinstance(dense, Mapping) and dense.get("total_over_active"):
        params.append(("total ÷ active", e(f"{dense['total_over_active']:.2f}×")))
    health = s.get("health") or {}
    weights = _pick(
        s,
        [
            ("weights_checked", "expert weights read", _yes),
            ("redundant_pairs", "near-duplicate expert pairs", str),
            ("min_distinct_experts", "fewest distinct experts in a layer", str),
        ],
    )
    if isinstance(health, Mapping) and health.get("findings"):
        weights.append(("findings", e("; ".join(map(str, health["findings"])))))
    for key in ("warnings", "notes"):
        if s.get(key):
            weights.append((key, e("; ".join(map(str, s[key])))))
    groups = [("Model", model), ("Routing", routing), ("Layers", layers), ("Parameters", params)]
    groups.append(("Weights", weights))
    # anything else the summary holds that is a plain value, so nothing is lost (last, under its key)
    shown = {
        "family", "model_type", "architectures", "num_experts", "top_k", "shared_experts", "score_function",
        "norm_topk_prob", "n_group", "topk_group", "routed_scaling_factor", "selection_bias", "router_bias",
        "expert_intermediate_size", "hidden_size", "stacks", "moe_layers", "dense_layers", "mtp_layers",
        "total_params", "active_params", "expert_params", "shared_expert_params", "router_params",
        "embedding_params", "non_expert_params", "mtp_params", "quantization", "dense_equivalent",
        "weights_checked", "redundant_pairs", "min_distinct_experts", "health", "warnings", "notes",
        "expert_share", "active_share", "config_sources", "family_source", "is_moe",
    }  # fmt: skip
    other = [
        (k.replace("_", " "), e(str(v)))
        for k, v in s.items()
        if k not in shown and v is not None and isinstance(v, (str, int, float, bool))
    ]
    if other:
        groups.append(("Other", other))
    return [(title, rows) for title, rows in groups if rows]


def _stat(v: Any, key: str) -> Any:
    return v.get(key) if isinstance(v, Mapping) else None


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


#: the per-layer columns: (heading, tooltip, value of a layer row)
LAYER_COLUMNS: list[tuple[str, str, Callable[[Mapping[str, Any]], Any]]] = [
    ("layer", "the model's own layer index", lambda r: r.get("layer")),
    ("experts", "experts found / routed experts", lambda r: _found(r)),
    ("top-k", "experts per token", lambda r: r.get("top_k")),
    ("layout", "how the experts' weights are stored", lambda r: r.get("layout")),
    ("params/expert", "parameters of one routed expert", lambda r: r.get("params_per_expert")),
    ("router norm min–max", "L2 norm of the router rows", lambda r: _range(r.get("router_norm_stats"))),
    ("norm outliers", "router rows whose norm is an outlier", lambda r: _n(r.get("router_norm_outliers"))),
    ("router cos max", "largest cosine of two router rows", lambda r: _stat(r.get("router_cosine"), "max")),
    ("duplicates", "near-duplicate expert pairs", lambda r: _n(r.get("redundant_pairs"))),
    ("distinct", "distinct experts (duplicates merged)", lambda r: r.get("distinct_experts")),
    ("zero experts", "experts whose weights are all zero", lambda r: _n(r.get("zero_experts"))),
    ("bias spread", "max - min of the selection bias", lambda r: _spread(r.get("bias"))),
]  # fmt: skip


def _found(r: Mapping[str, Any]) -> str | None:
    if r.get("num_experts") is None:
        return None
    return f"{r.get('experts_found', r['num_experts'])}/{r['num_experts']}"


def _n(v: Any) -> Any:
    return len(v) if isinstance(v, list) else None


def _range(v: Any) -> str | None:
    if not isinstance(v, Mapping) or v.get("min") is None:
        return None
    return f"{v['min']:.3f}–{v['max']:.3f}"


def _spread(v: Any) -> float | None:
    values = v.get("values") if isinstance(v, Mapping) else v
    if isinstance(values, list) and values and all(isinstance(x, (int, float)) for x in values):
        return float(max(values) - min(values))
    if isinstance(v, Mapping) and v.get("min") is not None and v.get("max") is not None:
        return float(v["max"] - v["min"])
    return None


def layer_table(layers: list[Mapping[str, Any]]) -> str:
    """One row per MoE layer, only the columns some layer has a value for; tensor names as tooltips."""
    cols = [c for c in LAYER_COLUMNS if any(c[2](r) is not None for r in layers)]
    head = "".join(f'<th scope=col title="{e(tip)}">{e(name)}</th>' for name, tip, _ in cols)
    body = []
    for r in layers:
        tensors = [
            str(r[k]) for k in ("router_tensor", "selection_bias_tensor", "router_bias_tensor") if r.get(k)
        ]
        cells = []
        for i, (_, _, get) in enumerate(cols):
            v = get(r)
            sort = (
                f' data-v="{float(v):.6g}"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            )
            tip = f' title="{e(", ".join(tensors))}"' if i == 0 and tensors else ""
            bad = ' class="bad"' if cols[i][0] in ("duplicates", "zero experts") and v else ""
            cells.append(f"<td{sort}{tip}{bad}>{e(_f(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="data sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
