"""The trace's tables in the report: the overview, the per-layer table (core columns, then the rest
folded), dead and cold experts by layer, and the most frequent routing paths."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from moediag.render.html.markup import e, fmt, fold, pct

if TYPE_CHECKING:  # pragma: no cover
    from moediag.analysis import TraceAnalysis

#: per-layer table: (header, key or function, digits, tooltip)
_COLUMNS: list[tuple[str, Any, int, str]] = [
    ("layer", "layer", 0, "the model's own layer index"),
    ("tokens", "tokens", 0, "valid (unmasked) tokens"),
    ("MaxVio", "max_vio", 2, "max load / mean load - 1 (balanced 0)"),
    ("max/mean", "max_mean", 2, "balanced 1"),
    ("min/mean", "min_mean", 2, "balanced 1"),
    ("CV", "cv", 2, "std / mean of the load, population std (balanced 0)"),
    ("Gini", "gini", 2, "balanced 0"),
    ("H/log E", "entropy_norm", 2, "normalised load entropy (balanced 1)"),
    ("eff. experts", "effective_experts", 1, "exp(entropy) (balanced E)"),
    ("dead", lambda r: len(r["dead_experts"]), 0, "experts with no tokens"),
    ("cold", lambda r: len(r["cold_experts"]), 0, "experts below eps/E of the load (includes dead)"),
    ("aux", "aux_loss", 3, "Switch-style aux loss of the routing in effect (balanced 1)"),
    (
        "aux*",
        "aux_loss_unbiased",
        3,
        "aux loss of the plain top-k: no selection bias or group limits (Megatron)",
    ),
    ("seq aux", "seq_aux_loss", 3, "per-sequence aux loss, mean over sequences"),
    ("z-loss", "z_loss", 2, "mean (logsumexp z)^2"),
    ("conf.", "confidence", 2, "mean max probability"),
    ("margin p50", "margin_median", 3, "median top-k boundary margin"),
    (
        "drop@CF1",
        lambda r: (r.get("drop_rate_total") or {}).get("1.0"),
        -1,
        "share dropped at capacity factor 1.0 (the same under every drop policy)",
    ),
    ("same-next", "consecutive_same_rate", -1, "share of next tokens with the same first choice"),
    ("accuracy", "accuracy", -1, "share of correct predictions (tokens.correct)"),
]


#: the main layer table's columns (fits the 1200-pixel page); the rest go into a folded second table
CORE_COLUMNS = ("layer", "tokens", "MaxVio", "CV", "H/log E", "dead", "cold", "aux", "z-loss", "conf.",
                "drop@CF1", "same-next")  # fmt: skip


def layer_table(analysis: TraceAnalysis) -> str:
    """The core figures per layer, then the others (same rows) in a folded table, so neither is wider
    than the page; every heading has a tooltip saying what it is."""
    more = [c for c in _COLUMNS if c[0] not in CORE_COLUMNS or c[0] == "layer"]
    core = [c for c in _COLUMNS if c[0] in CORE_COLUMNS]
    extra = _layer_table_html(analysis, more)
    return _layer_table_html(analysis, core, ids=True) + (
        f"<details><summary>More figures per layer</summary>{extra}</details>" if extra else ""
    )


def _layer_table_html(
    analysis: TraceAnalysis, columns: list[tuple[str, Any, int, str]], ids: bool = False
) -> str:
    rows = analysis.layers
    cols = [c for c in columns if any(_cell(r, c[1]) is not None for r in rows) or c[1] == "layer"]
    if len(cols) <= 1:
        return ""
    head = "".join(f'<th scope=col title="{e(tip)}">{e(name)}</th>' for name, _, _, tip in cols)
    body = []
    for r in rows:
        cells = []
        for name, key, digits, _ in cols:
            v = _cell(r, key)
            text = pct(v) if digits < 0 else (fmt(v) if digits == 0 else fmt(v, digits))
            cls = ' class="bad"' if name == "dead" and v else ""
            sort = "" if v is None else f' data-v="{float(v):.6g}"'
            label = f"{text} dead" if name == "dead" and v else text
            cells.append(f"<td{cls}{sort}>{e(label)}</td>")
        rid = f' id="layer-{r["layer"]}"' if ids else ""
        body.append(f"<tr{rid}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="data sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell(row: Mapping[str, Any], key: Any) -> Any:
    v = key(row) if callable(key) else row.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def overview_rows(analysis: TraceAnalysis) -> list[tuple[str, str]]:
    s = analysis.summary
    meta = analysis.trace_meta
    rows = [
        (
            "trace",
            f"{e(os.path.basename(analysis.path.rstrip('/')) or analysis.path)} "
            f"({fmt(meta.get('shards', 1))} shard(s))",
        )
    ]
    if meta.get("model"):
        rows.append(("model", e(str(meta["model"]))))
    rows += [
        ("tokens", fmt(s["tokens"])),
        ("MoE layers", fmt(s["layers"])),
        ("experts / top-k", f"{e(fmt(s['num_experts']))} / {e(fmt(s['top_k']))}"),
    ]
    for key, label in (
        ("max_vio", "MaxVio (balanced 0)"),
        ("cv", "CV (balanced 0)"),
        ("entropy_norm", "load entropy, normalised (balanced 1)"),
        ("aux_loss", "aux loss (balanced 1)"),
        ("aux_loss_unbiased", "aux loss of the unbiased top-k (Megatron's logged value, balanced 1)"),
        ("z_loss", "z-loss"),
    ):
        f = s[key]
        rows.append(
            (
                label,
                "—"
                if f["mean"] is None
                else f"mean {fmt(f['mean'])}, worst {fmt(f['worst'])} (layer {f['worst_layer']})",
            )
        )
    rows.append(("transformers aux loss (pooled, balanced k)", fmt(s.get("hf_aux_loss"))))
    rows.append(("dead / cold experts", f"{s['dead_experts']} / {s['cold_experts']}"))
    if s.get("accuracy") is not None:
        rows.append(("accuracy", pct(s["accuracy"])))
    return rows


def dead_cold_table(analysis: TraceAnalysis) -> str:
    rows = [r for r in analysis.layers if r["cold_experts"]]
    if not rows:
        return "<p>No dead or cold experts.</p>"
    body = "".join(
        f"<tr><td>{r['layer']}</td><td>{e(fold(r['dead_experts'], 24)) or '—'}</td>"
        f"<td>{e(fold(_cold_only(r), 24)) or '—'}</td></tr>"
        for r in rows
    )
    return (
        "<details><summary>Dead and cold experts by layer</summary><table class=data><thead><tr>"
        f"<th>layer</th><th>dead (no tokens)</th><th>cold, not dead</th></tr></thead><tbody>{body}</tbody>"
        "</table></details>"
    )


def _cold_only(row: Mapping[str, Any]) -> list[int]:
    dead = set(row["dead_experts"])
    return [x for x in row["cold_experts"] if x not in dead]


def path_table(analysis: TraceAnalysis) -> str:
    """The most frequent paths of each window (the full depth, then each ``--path-window``)."""
    doc = analysis.computed()
    raw = doc.get("paths", doc.get("summary", {}).get("paths"))
    if isinstance(raw, Mapping):
        raw = raw.get("frequent", raw.get("paths"))
    groups: list[tuple[str, list[Any]]] = []
    if isinstance(raw, list) and raw and all(isinstance(w, Mapping) and "frequent" in w for w in raw):
        for w in raw:
            if w.get("frequent"):
                layers = w.get("layers") or []
                title = f"layers {layers[0]}..{layers[-1]}" if layers else ""
                groups.append((title, list(w["frequent"])))
    elif isinstance(raw, list) and raw:
        groups.append(("", raw))
    return "".join(_path_rows_table(title, rows, many=len(groups) > 1) for title, rows in groups)


def _path_rows_table(title: str, rows: list[Any], many: bool) -> str:
    body = []
    for p in rows[:20]:
        if not isinstance(p, Mapping):
            continue
        path = p.get("path")
        label = "→".join(map(str, path)) if isinstance(path, (list, tuple)) else str(path)
        lo, hi = p.get("ci_low"), p.get("ci_high")
        ci = "—" if lo is None or hi is None else f"{pct(lo)} – {pct(hi)}"
        flag = ' class="bad"' if p.get("below_overall") else ""
        body.append(
            f'<tr{flag}><td>{e(label)}</td><td data-v="{p.get("tokens") or 0}">{fmt(p.get("tokens"))}'
            f"</td><td>{pct(p.get('accuracy'))}</td><td>{ci}</td>"
            f"<td>{'below overall' if p.get('below_overall') else ''}</td></tr>"
        )
    if not body:
        return ""
    heading = f"<h3>Paths over {e(title)}</h3>" if many and title else ""
    return (
        f'{heading}<table class="data sortable"><thead><tr><th>path (top-1 expert per layer)</th>'
        "<th>tokens</th><th>accuracy</th><th>Wilson 95%</th><th></th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
