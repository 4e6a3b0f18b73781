"""One self-contained HTML report: inline CSS, inline SVG (or base64 PNG for big heatmaps), no network.

``render_report(trace, checkpoint=None, checks=None)`` returns the page as a string; ``write_report(path,
html)`` writes it atomically. The page reads fully without scripts; a small inline script only makes the
per-layer table sortable. Nothing in the file points outside it: no CDN, no web fonts, no links but
in-page anchors (tests assert this).

The creation date sits in ``<time class="created">`` and the version in ``<span class="version">`` (and
the ``generator`` meta tag), so golden tests can scrub both.

Checkpoint sections come from a checkpoint result's ``to_dict()`` (or the dict itself), rendered
generically: scalar maps as key/value tables, lists of per-layer dicts as tables, and numeric vectors and
matrices under known keys (router norms, selection bias, redundancy) as figures. See
:func:`checkpoint_sections` -- the extension point for richer checkpoint rendering.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.render import plots
from moediag.render.plots import PlotKind, PlotUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

#: a heatmap with more cells than this (or small multiples with more panels) is embedded as PNG: an SVG
#: of 61 x 256 rectangles is larger and slower to paint than one image
PNG_CELLS = 4096
PNG_PANELS = 16
PNG_DPI = 110


@dataclass
class Section:
    """One ``<section>`` of the report: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    body: str
    note: str = ""


@dataclass
class Report:
    """Everything a page shows, before it becomes HTML."""

    title: str
    verdict: str
    verdict_class: str
    findings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    omitted: list[tuple[str, str]] = field(default_factory=list)  # (section title, reason)


# -- small HTML helpers -------------------------------------------------------------------------------------

e = html.escape


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** (-digits)):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def kv_table(rows: Iterable[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th scope=row>{e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def fold(items: Sequence[Any], limit: int = 12) -> str:
    """``0, 3, 7, … (+20 more)``."""
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def _asset(name: str) -> str:
    return resources.files("moediag.render").joinpath(f"templates/{name}").read_text(encoding="utf-8")


# -- figures -------------------------------------------------------------------------------------------------

_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_ID = re.compile(r'id="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """Matplotlib's SVG made fit to inline in HTML: no XML prolog, DOCTYPE, namespace URLs or RDF metadata,
    and element ids prefixed so several figures in one page never collide."""
    svg = svg[svg.index("<svg") :]
    svg = _METADATA.sub("", svg)
    svg = _XMLNS.sub("", svg, count=3)
    ids = set(_ID.findall(svg))
    if ids:

        def swap(m: re.Match[str]) -> str:
            head, name = m.group(1), m.group(2)
            return f"{head}{prefix}{name}" if name in ids else m.group(0)

        svg = re.sub(r'(id="|href="#|url\(#)([^")]+)', swap, svg)
    return svg.replace("xlink:href=", "href=")


def _prefer_png(kind: PlotKind, analysis: TraceAnalysis) -> bool:
    rows = analysis.layers
    e = max((len(r["load"]) for r in rows), default=0)
    if kind in (PlotKind.LOAD_HEATMAP, PlotKind.EXPERT_ACCURACY):
        return len(rows) * e > PNG_CELLS
    if kind == PlotKind.COACTIVATION:
        return e * e > PNG_CELLS
    if kind == PlotKind.LOAD_HISTOGRAMS:
        return len(rows) > PNG_PANELS
    return kind == PlotKind.MARGIN and len(rows) > plots.MAX_LINES


class FigureEmbedder:
    """Turns figures into ``<figure>`` HTML; ``enabled=False`` puts a placeholder instead (golden tests)."""

    def __init__(self, enabled: bool = True, progress: Callable[[int], None] | None = None) -> None:
        self.enabled = enabled
        self.count = 0
        self.progress = progress  # called with 1 after each figure is drawn (the slow part of a report)

    def __call__(self, make: Callable[[], Figure], caption: str, alt: str, png: bool = False) -> str:
        self.count += 1
        cap = f"<figcaption>{caption}</figcaption>"
        if not self.enabled:
            return f'<figure class="fig"><div class="placeholder">[figure: {e(alt)}]</div>{cap}</figure>'
        fig = make()
        if png:
            data = base64.b64encode(plots.figure_bytes(fig, "png", PNG_DPI)).decode("ascii")
            body = f'<img src="data:image/png;base64,{data}" alt="{e(alt)}">'
        else:
            svg = plots.figure_bytes(fig, "svg").decode("utf-8")
            body = inline_svg(svg, f"f{self.count}-").replace(
                "<svg", f'<svg role="img" aria-label="{e(alt)}"', 1
            )
        if self.progress is not None:
            self.progress(1)
        return f'<figure class="fig">{body}{cap}</figure>'


def _try_figure(
    embed: FigureEmbedder, kind: PlotKind, analysis: TraceAnalysis, layer: int | None, caption: str
) -> tuple[str | None, str | None]:
    """(figure html, None), or (None, the reason the trace cannot give this figure)."""
    try:
        fig = plots.make_figure(kind, analysis, layer)  # fails fast when data is absent
    except PlotUnavailableError as exc:
        return None, exc.message
    return embed(lambda: fig, caption, plots.DESCRIPTIONS[kind], _prefer_png(kind, analysis)), None


# -- verdict and findings ---------------------------------------------------------------------------------


def findings(analysis: TraceAnalysis) -> list[str]:
    """The main findings in plain words, worst first (HTML-escaped)."""
    s = analysis.summary
    rows = analysis.layers
    out: list[str] = []
    dead_rows = [r for r in rows if r["dead_experts"]]
    if dead_rows:
        where = "; ".join(f"layer {r['layer']}: expert {fold(r['dead_experts'], 6)}" for r in dead_rows[:5])
        more = f"; and {len(dead_rows) - 5} more layers" if len(dead_rows) > 5 else ""
        out.append(
            f"{s['dead_experts']} dead expert(s) (no tokens at all) in {len(dead_rows)} layer(s): "
            f"{e(where)}{more}."
        )
    vio = s["max_vio"]
    if vio["worst"] is not None:
        out.append(
            f"Worst imbalance: layer {vio['worst_layer']}, MaxVio {vio['worst']:.2f}: its busiest expert "
            f"gets {1 + vio['worst']:.2f}× the balanced load (mean MaxVio over layers {vio['mean']:.2f}; "
            "balanced = 0)."
        )
    from moediag.analysis.verdict import threshold

    cv_bound = threshold("max_cv", getattr(analysis, "check_config", None))
    high_cv = [
        r["layer"] for r in rows if r.get("cv") is not None and cv_bound is not None and r["cv"] > cv_bound
    ]
    if high_cv:
        out.append(
            f"{len(high_cv)} of {len(rows)} layers have a load CV above {cv_bound:g} (check rule max_cv): "
            f"layers {e(fold(high_cv))}."
        )
    cold = s["cold_experts"] - s["dead_experts"]
    if cold > 0:
        eps = analysis.options.cold_eps
        out.append(f"{cold} further expert(s) are cold (share below {eps:g}/E) but not dead.")
    drops = [(r["drop_rate_total"].get("1.0"), r["layer"]) for r in rows if r.get("drop_rate_total")]
    drops = [(v, lay) for v, lay in drops if v is not None]
    if drops:
        worst, lay = max(drops)
        out.append(
            f"With capacity factor 1.0, up to {pct(worst)} of assignments would be dropped (layer {lay}; "
            "the same share under every drop policy, only which tokens drop differs)."
        )
    flips = [((r.get("margin_below") or {}).get("0.01"), r["layer"]) for r in rows]
    flips = [(v, lay) for v, lay in flips if v is not None]
    if flips:
        worst, lay = max(flips)
        out.append(
            f"Routing sensitivity: in layer {lay}, {pct(worst)} of tokens have a top-k margin below 0.01, "
            "so their expert choice flips under small noise."
        )
    acc_rows = [
        r
        for r in rows
        if any(x.get("below_overall") for x in (r.get("expert_accuracy") or []) if isinstance(x, dict))
    ]
    if acc_rows:
        n = sum(
            sum(1 for x in r["expert_accuracy"] if isinstance(x, dict) and x.get("below_overall"))
            for r in acc_rows
        )
        out.append(
            f"{n} expert(s) in {len(acc_rows)} layer(s) have accuracy wholly below their layer's overall "
            "accuracy (Wilson 95% interval)."
        )
    if s.get("excluded_nonfinite"):
        out.append(f"{s['excluded_nonfinite']} token row(s) with NaN/Inf router logits were excluded.")
    if not out:
        out.append("No dead experts, no notable imbalance.")
    return out


def checks_section(checks: Mapping[str, Any]) -> Section:
    """The ``moediag check`` results (a ``CheckReport.to_dict()``) as a table."""
    rows = []
    for rule in checks.get("rules", []):
        worst = rule.get("worst") or {}
        where = "model" if worst.get("layer") is None else f"layer {worst['layer']}"
        shown = worst.get("shown")
        status = str(rule.get("status", ""))
        rows.append(
            f'<tr class="{e(status)}"><td>{e(str(rule.get("rule")))}</td><td>{e(status.upper())}</td>'
            f"<td>{e(shown) if shown is not None else '—'}</td><td>{e(fmt(rule.get('threshold')))}</td>"
            f"<td>{e(where)}</td><td>{e(str(rule.get('reason') or ''))}</td></tr>"
        )
    meta = checks.get("meta") or {}
    source = meta.get("config_file") or "defaults and flags"
    body = (
        f"<p>Thresholds from {e(str(source))}.</p><table class=data><thead><tr><th>rule</th><th>status</th>"
        "<th>worst value</th><th>threshold</th><th>where</th><th>note</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return Section("checks", "Checks", body)


# -- trace sections ---------------------------------------------------------------------------------------

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


def trace_sections(
    analysis: TraceAnalysis, embed: FigureEmbedder
) -> tuple[list[Section], list[tuple[str, str]]]:
    sections: list[Section] = []
    omitted: list[tuple[str, str]] = []

    def add(
        sid: str, title: str, kind: PlotKind, caption: str, extra: str = "", layer: int | None = None
    ) -> None:
        fig, why = _try_figure(embed, kind, analysis, layer, caption)
        if fig is None:
            omitted.append((title, why or "not available"))
            return
        sections.append(Section(sid, title, fig + extra))

    imbalance, _ = _try_figure(
        embed,
        PlotKind.IMBALANCE,
        analysis,
        None,
        "MaxVio, CV and dead experts per layer; dashed lines: check's default limits.",
    )
    sections.append(Section("overview", "Overview", kv_table(overview_rows(analysis)) + (imbalance or "")))
    sections.append(
        Section(
            "layers",
            "Layers",
            "<p>One row per MoE layer; click a heading to sort (with scripts on). "
            "— means the trace lacks what the figure needs.</p>"
            + layer_table(analysis)
            + dead_cold_table(analysis),
        )
    )
    add(
        "load-heatmap",
        "Load per layer and expert",
        PlotKind.LOAD_HEATMAP,
        "Each cell is an expert's load divided by the balanced load k·T/E (1 = balanced, log scale): red is "
        "overloaded, blue underloaded, black dead.",
    )
    add(
        "load-histograms",
        "Load histograms",
        PlotKind.LOAD_HISTOGRAMS,
        "Load per expert in expert order, one panel per layer; the dashed line is the balanced load.",
    )
    add(
        "coactivation",
        "Co-activation",
        PlotKind.COACTIVATION,
        "Row i: how often each other expert j is in the same token's top-k when i is (the layer with the "
        "worst MaxVio). Bright columns are experts that pair with everyone.",
    )
    add(
        "margin",
        "Top-k margin",
        PlotKind.MARGIN,
        "The gap between the k-th and (k+1)-th router score per token. Mass near 0 means many tokens sit on "
        "the boundary and would switch experts under small perturbations.",
    )
    add(
        "drop-rate",
        "Capacity drop rate",
        PlotKind.DROP_RATE,
        "Share of assignments a capacity limit C = ⌈CF·k·T/E⌉ per group would drop, by capacity factor.",
    )
    add("steps", "Per-step trends", PlotKind.STEPS, "Imbalance per training step (tokens.step) or dump row.")
    add(
        "expert-accuracy",
        "Per-expert accuracy",
        PlotKind.EXPERT_ACCURACY,
        "Accuracy of the tokens whose first choice is each expert.",
    )
    add(
        "path-accuracy",
        "Per-path accuracy",
        PlotKind.PATH_ACCURACY,
        "The most frequent routing paths; vermillion bars lie wholly below the overall accuracy.",
        extra=path_table(analysis),
    )
    return sections, omitted


# -- serving cost ---------------------------------------------------------------------------------------


def _bytes(x: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:,.2f} {unit}"
    return f"{x:,.0f} B"


def serving_section(trace: TraceAnalysis, checkpoint: Any, embed: FigureEmbedder) -> Section | None:
    """ "What routing costs a server": experts a decode batch touches (figure) and, with a checkpoint
    analysis, the weight bytes a step reads and the dense model of equal bandwidth, per B."""
    touched = trace.summary.get("experts_touched")
    if not touched:
        return None
    fig, _ = _try_figure(
        embed,
        PlotKind.EXPERTS_TOUCHED,
        trace,
        None,
        "Share of a layer's experts the B tokens of a decode batch chose (B consecutive token slots of the "
        "trace), beside 1 − (1 − k/E)^B for uniform routing. A step reads every touched expert's weights.",
    )
    cost = None
    from moediag.checkpoint.analysis import CheckpointAnalysis

    if isinstance(checkpoint, CheckpointAnalysis):
        from moediag.checkpoint.compute import trace_serving_cost

        cost = trace_serving_cost(trace, checkpoint)
    head = "<tr><th>B</th><th>experts touched</th><th>uniform</th><th>batches</th>"
    if cost:
        head += "<th>weight bytes a step</th><th>bytes a token</th><th>dense model, equal bandwidth</th>"
    rows = []
    for b, row in touched.items():
        cells = [b, pct(row["share"]), pct(row["uniform"]), fmt(row["batches"])]
        if cost:
            c = cost[b]
            cells += [
                _bytes(c["step_bytes"]),
                _bytes(c["bytes_per_token"]),
                f"{fmt(c['equal_bandwidth_dense_params'])} params",
            ]
        rows.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in cells) + "</tr>")
    missing = ""
    if cost:
        first = next(iter(cost.values()))
        blocks = len(first["per_layer_source"])
        if first["layers_from_trace"] < blocks:
            missing = (
                f" {blocks - first['layers_from_trace']} of the checkpoint's {blocks} MoE layers have no "
                "trace layer of the same index and expert count: uniform routing is assumed for them."
            )
    note = (
        "<p>Weight bytes a step: every non-expert weight plus the touched share of each MoE layer's routed "
        f"experts, as stored in the checkpoint (docs/compare.md).{e(missing)}</p>"
        if cost
        else "<p>Give a checkpoint too (<code>moediag report TRACE CHECKPOINT</code>) for the weight bytes "
        "a step reads.</p>"
    )
    table = f'<table class="data"><thead>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return Section("serving", "What routing costs a server", (fig or "") + table + note)


# -- checkpoint sections (extension point) ----------------------------------------------------------------

#: per-layer vector keys drawn as bars, and matrix keys drawn as heatmaps, when a checkpoint dict has them
CHECKPOINT_VECTORS = {
    "router_norms": ("Router weight row norm per expert", "L2 norm of the router row"),
    "bias": ("Selection bias per expert (e_score_correction_bias)", "bias added to scores for selection"),
    "router_bias": ("Router logit bias per expert", "bias added to the logits"),
    "expert_norms": ("Expert weight norm per expert", "L2 norm of the expert's weights"),
}
CHECKPOINT_MATRICES = {
    "redundancy": ("Expert redundancy", "cosine similarity of expert weights"),
    "expert_similarity": ("Expert redundancy", "cosine similarity of expert weights"),
    "router_similarity": ("Router row similarity", "cosine similarity of router rows"),
}


def _sort_key(v: Any) -> str:
    """The ``data-v`` attribute the sorting script reads (numbers only)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f' data-v="{float(v):.6g}"'
    return ""


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _numbers(v: Any) -> list[float] | None:
    if isinstance(v, Mapping):
        for key in ("values", "norms", "bias", "per_expert"):
            if key in v:
                return _numbers(v[key])
        return None
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    return None


def _matrix(v: Any) -> list[list[float]] | None:
    if isinstance(v, Mapping):
        for key in ("matrix", "cosine", "similarity", "values"):
            if key in v:
                return _matrix(v[key])
        return None
    if isinstance(v, list) and v and all(_numbers(x) is not None for x in v):
        return [_numbers(x) or [] for x in v]
    return None


def _vector_figure(title: str, label: str, per_layer: list[tuple[int, list[float]]]) -> Figure:
    with plots._rc():
        fig = plots._new_figure(10.0, 1.0 + 1.3 * min(len(per_layer), 8))
        axes = fig.subplots(min(len(per_layer), 8), 1, squeeze=False)
        for ax, (layer, vals) in zip(axes[:, 0], per_layer[:8], strict=False):
            ax.bar(range(len(vals)), vals, color=plots.OKABE_ITO[0], width=0.9)
            ax.set_ylabel(f"layer {layer}", fontsize=8)
        axes[0, 0].set_title(title + (f" (first 8 of {len(per_layer)} layers)" if len(per_layer) > 8 else ""))
        axes[-1, 0].set_xlabel("expert")
        fig.supylabel(label)
    return fig


def _matrix_figure(title: str, label: str, layer: int, mat: list[list[float]]) -> Figure:
    import matplotlib

    with plots._rc():
        fig = plots._new_figure(7.0, 6.0)
        ax = fig.add_subplot()
        im = ax.imshow(
            mat,
            cmap=matplotlib.colormaps[plots.SEQUENTIAL_CMAP],
            interpolation="nearest",
            vmin=-1 if min(min(r) for r in mat) < 0 else 0,
            vmax=1,
        )
        ax.set_title(f"{title}, layer {layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax, shrink=0.85).set_label(label)
    return fig


def checkpoint_sections(doc: Mapping[str, Any], embed: FigureEmbedder) -> list[Section]:
    """Sections for a checkpoint result dict (``to_dict()`` of the checkpoint analysis).

    Renders ``meta``/``architecture``/``params`` and other scalar maps as key/value tables, ``layers``
    (a list of dicts) as a table of their scalar fields, per-expert vectors under
    :data:`CHECKPOINT_VECTORS` as bar figures and matrices under :data:`CHECKPOINT_MATRICES` as heatmaps.
    """
    from moediag.render import checkpoint_html

    out: list[Section] = []
    body = "".join(
        f"<h3>{e(title)}</h3>" + kv_table(rows) for title, rows in checkpoint_html.summary_groups(doc)
    )
    if body:
        out.append(Section("checkpoint", "Checkpoint: architecture and parameters", body))
    layers = [r for r in doc.get("layers") or [] if isinstance(r, Mapping)]
    if layers:
        body = checkpoint_html.layer_table(layers)
        for key, (title, label) in CHECKPOINT_VECTORS.items():
            per_layer = [
                (int(r.get("layer", i)), v) for i, r in enumerate(layers) if (v := _numbers(r.get(key)))
            ]
            if per_layer:
                body += embed(partial(_vector_figure, title, label, per_layer), e(title), title)
        for key, (title, label) in CHECKPOINT_MATRICES.items():
            mats = [(int(r.get("layer", i)), mx) for i, r in enumerate(layers) if (mx := _matrix(r.get(key)))]
            for layer, mat in mats[:4]:
                body += embed(
                    partial(_matrix_figure, title, label, layer, mat),
                    e(f"{title}, layer {layer}"),
                    title,
                    png=len(mat) ** 2 > PNG_CELLS,
                )
        dups = [
            (int(r.get("layer", i)), r["redundant_pairs"])
            for i, r in enumerate(layers)
            if isinstance(r.get("redundant_pairs"), list) and r["redundant_pairs"]
        ]
        if dups:
            items = "".join(
                f"<li>layer {lay}: {e(fold([tuple(p[:2]) for p in pairs], 10))}</li>" for lay, pairs in dups
            )
            body += f"<h3>Near-duplicate expert pairs</h3><ul>{items}</ul>"
        out.append(Section("checkpoint-layers", "Checkpoint: layers", body))
    return out


# -- the page -----------------------------------------------------------------------------------------------


def _as_dict(obj: Any) -> Mapping[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        doc = to_dict()
        if isinstance(doc, Mapping):
            return doc
    raise TypeError(f"expected a dict or an object with to_dict(), got {type(obj).__name__}")


def build_report(
    trace: TraceAnalysis | None = None,
    checkpoint: Any = None,
    *,
    checks: Any = None,
    title: str | None = None,
    figures: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """The report's content: verdict, findings and sections (no HTML page around them yet).
    ``progress(1)`` is called after each figure is drawn."""
    if trace is None and checkpoint is None:
        raise ValueError("a report needs a trace analysis, a checkpoint result, or both")
    embed = FigureEmbedder(figures, progress)
    check_doc = _as_dict(checks)
    ckpt_doc = _as_dict(checkpoint)
    sections: list[Section] = []
    omitted: list[tuple[str, str]] = []
    found: list[str] = []
    if trace is not None:
        v = trace.verdict()
        found = findings(trace)
        sections, omitted = trace_sections(trace, embed)
        name = os.path.basename(trace.path.rstrip("/")) or trace.path
    else:
        from moediag.analysis.verdict import checkpoint_verdict

        v = checkpoint_verdict(ckpt_doc or {})
        found = [
            e(str(x)) for x in ((ckpt_doc or {}).get("summary") or {}).get("health", {}).get("findings") or []
        ]
        name = str(((ckpt_doc or {}).get("meta") or {}).get("path") or "checkpoint")
        name = os.path.basename(name.rstrip("/")) or name
    text, vclass = v.text, v.severity
    if check_doc is not None:
        text = str(check_doc.get("verdict") or text)
        vclass = "bad" if check_doc.get("status") == "fail" else "ok"
        sections.insert(0, checks_section(check_doc))
    if trace is not None:
        serving = serving_section(trace, checkpoint, embed)
        if serving is not None:
            sections.append(serving)
    if ckpt_doc is not None:
        sections += checkpoint_sections(ckpt_doc, embed)
        if trace is not None:
            health = (ckpt_doc.get("summary") or {}).get("health") or {}
            found += [f"Checkpoint: {e(str(x))}." for x in health.get("findings") or []]
    return Report(title or f"moediag report: {name}", text, vclass, found, sections, omitted)


def render_html(report: Report, *, created: str | None = None, version: str | None = None) -> str:
    """The page for ``report``. ``created`` (ISO date-time) and ``version`` default to now and moediag's."""
    if version is None:
        from moediag import __version__

        version = __version__
    if created is None:
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<li><a href="#{s.id}">{e(s.title)}</a></li>' for s in report.sections)
    omitted = ""
    if report.omitted:
        items = "".join(f"<li>{e(t)}: {e(why)}</li>" for t, why in report.omitted)
        omitted = (
            f'<details class="omitted"><summary>Not in this report ({len(report.omitted)})</summary>'
            f"<ul>{items}</ul></details>"
        )
    found = "".join(f"<li>{f}</li>" for f in report.findings)
    body = "".join(f'<section id="{s.id}"><h2>{e(s.title)}</h2>{s.body}</section>' for s in report.sections)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="moediag {e(version)}">
<title>{e(report.title)}</title>
<style>
{_asset("report.css")}</style>
</head>
<body>
<header>
<h1>{e(report.title)}</h1>
<p class="verdict {report.verdict_class}" role="status"><span class="badge">{
        {"bad": "✗", "warn": "!", "ok": "✓", "info": "i"}[report.verdict_class]
    }</span> {e(report.verdict)}</p>
<ul class="findings">{found}</ul>
<nav><ul>{nav}</ul>{omitted}</nav>
</header>
<main>
{body}
</main>
<footer>Generated by moediag <span class="version">{e(version)}</span> on <time class="created">{
        e(created)
    }</time>.
Figures and definitions: docs/metrics.md and docs/report.md of moediag.</footer>
<script>
{_asset("report.js")}</script>
</body>
</html>
"""
    return page


def render_report(
    trace: TraceAnalysis | None = None,
    checkpoint: Any = None,
    *,
    checks: Any = None,
    title: str | None = None,
    figures: bool = True,
    created: str | None = None,
    version: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> str:
    """The whole self-contained HTML page for a trace analysis and/or a checkpoint result.
    ``progress(1)`` is called after each figure is drawn."""
    report = build_report(trace, checkpoint, checks=checks, title=title, figures=figures, progress=progress)
    return render_html(report, created=created, version=version)


def write_report(path: str | os.PathLike[str], page: str) -> Path:
    """Write the page atomically (temp file beside it, then rename). Returns the path."""
    target = Path(path)
    plots.write_atomic(target, page.encode("utf-8"))
    return target
