"""The compare section of the HTML report: ``moediag compare A B --html FILE``.

Built from a :class:`moediag.compare.Comparison` (or its ``to_dict()``) with the report's own parts
(``page.Section``, ``page.Report``, ``page.render_html``, ``embed.FigureEmbedder``, ``markup``), so the page
has the report's look and its guarantees: one self-contained file, inline CSS and SVG, no external
references. ``render_compare_report(cmp)`` returns the page; write it with
``moediag.render.html.write_report`` (atomic). The figure is
:func:`moediag.render.plots.compare.compare_figure`.

The verdict is plain words: where the load shifted most (Jensen-Shannon divergence, base 2), the router
saturation against its random baseline k/E when both traces cover the same tokens, and the accuracy shift.
Its class is ``warn`` when some expert's accuracy shifted (Newcombe 95% interval excludes 0), else ``ok``:
a comparison has no pass/fail threshold of its own (``moediag check`` has them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from moediag.render.html.embed import FigureEmbedder
from moediag.render.html.markup import e, fmt, kv_table, pct
from moediag.render.html.page import Report, Section, render_html
from moediag.render.plots.compare import compare_figure

#: the figure's description (its ``aria-label``)
FIGURE_ALT = "per-layer load JS divergence between A and B, and top-k overlap against its random baseline k/E"


def _doc(cmp: Any) -> Mapping[str, Any]:
    if isinstance(cmp, Mapping):
        return cmp
    to_dict = getattr(cmp, "to_dict", None)
    if callable(to_dict):
        doc = to_dict()
        if isinstance(doc, Mapping):
            return doc
    raise TypeError(f"expected a Comparison or its to_dict(), got {type(cmp).__name__}")


def _name(path: Any) -> str:
    text = str(path or "")
    return os.path.basename(text.rstrip("/")) or text


def _signed(v: Any, digits: int = 2) -> str:
    return "—" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:+.{digits}f}"


def _arrow(a: Any, b: Any, delta: Any) -> str:
    """``0.41 → 0.57 (+0.16)``."""
    return f"{fmt(a, 2)} → {fmt(b, 2)} ({_signed(delta)})"


def _sort(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f' data-v="{float(v):.6g}"'
    return ""


# -- verdict ---------------------------------------------------------------------------------------------


def _baseline_words(rows: Sequence[Mapping[str, Any]]) -> str:
    """``k/E = 2/8 = 0.250`` when every layer has the same k and E, else the mean baseline."""
    pairs = {(r.get("top_k"), r.get("num_experts")) for r in rows if r.get("topk_overlap") is not None}
    if len(pairs) == 1:
        k, n = next(iter(pairs))
        if k and n:
            return f"k/E = {k}/{n} = {k / n:.3f}"
    base = [r["topk_overlap_baseline"] for r in rows if r.get("topk_overlap_baseline") is not None]
    return f"k/E ≈ {sum(base) / len(base):.3f} (mean over layers)" if base else "k/E"


def compare_verdict(cmp: Any) -> tuple[str, str]:
    """(the verdict line in plain words, its class ``ok`` | ``warn``)."""
    doc = _doc(cmp)
    s = doc.get("summary") or {}
    rows = doc.get("layers") or []
    if (doc.get("meta") or {}).get("inputs") == "checkpoints":
        bias = s.get("selection_bias_delta_max_abs")
        text = (
            f"Router rows changed least in cosine at min {fmt(s.get('router_cosine_min'))} "
            f"(mean {fmt(s.get('router_cosine_mean'))}, 1 = unchanged); "
            + (f"largest selection-bias change {fmt(bias)}." if bias is not None else "no selection bias.")
        )
        return text, "ok"
    parts = []
    js = s.get("load_js_divergence") or {}
    if js.get("worst") is not None:
        if js["worst"] == 0:
            parts.append("load did not shift (JS divergence 0 in every layer)")
        else:
            parts.append(
                f"load shifted most at layer {js['worst_layer']} (JS {fmt(js['worst'])}, base 2: "
                "0 = same shares, 1 = disjoint)"
            )
    ov = s.get("topk_overlap") or {}
    if s.get("tokens_match") and ov.get("mean") is not None:
        parts.append(
            f"router saturation: top-k overlap mean {fmt(ov['mean'])} "
            f"against baseline {_baseline_words(rows)} "
            f"(lowest {fmt(ov['worst'])} at layer {ov['worst_layer']}; 1 = same choices)"
        )
    else:
        parts.append("router saturation not measured (the traces do not cover the same tokens)")
    if s.get("accuracy_delta") is not None:
        parts.append(
            f"accuracy {pct(s.get('accuracy_a'))} → {pct(s.get('accuracy_b'))}, "
            f"{s.get('shifted_experts', 0)} expert(s) shifted"
        )
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + "."
    verdict = s.get("verdict")  # moediag.compare.verdict: the judgement is the library's, shown first
    if isinstance(verdict, Mapping) and verdict.get("line"):
        return f"{verdict['line']}. {text}", ("warn" if verdict.get("status") == "worse" else "ok")
    return text, ("warn" if s.get("shifted_experts") else "ok")


# -- the section ---------------------------------------------------------------------------------------------

_COLUMNS = (
    ("layer", "the model's own layer index"),
    ("top-1 agreement", "share of tokens with the same first choice (random 1/E)"),
    ("top-k overlap", "mean |topk_A ∩ topk_B| / k on the same tokens (random k/E)"),
    ("k/E", "random baseline of the top-k overlap"),
    ("load JS", "Jensen-Shannon divergence of the load shares, base 2 (0 = same, 1 = disjoint)"),
    ("MaxVio A → B", "max load / mean load - 1, A then B (delta B - A)"),
    ("CV A → B", "std / mean of the load, A then B (delta B - A)"),
)


def _layer_rows_html(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f'<th scope=col title="{e(tip)}">{e(name)}</th>' for name, tip in _COLUMNS)
    body = []
    for r in rows:
        cells = [
            (fmt(r.get("layer")), r.get("layer")),
            (fmt(r.get("top1_agreement")), r.get("top1_agreement")),
            (fmt(r.get("topk_overlap")), r.get("topk_overlap")),
            (fmt(r.get("topk_overlap_baseline")), r.get("topk_overlap_baseline")),
            (fmt(r.get("load_js_divergence")), r.get("load_js_divergence")),
            (_arrow(r.get("max_vio_a"), r.get("max_vio_b"), r.get("max_vio_delta")), r.get("max_vio_delta")),
            (_arrow(r.get("cv_a"), r.get("cv_b"), r.get("cv_delta")), r.get("cv_delta")),
        ]
        tds = "".join(f"<td{_sort(v)}>{e(text)}</td>" for text, v in cells)
        body.append(f'<tr id="compare-layer-{e(str(r.get("layer")))}">{tds}</tr>')
    return (
        f'<div class="scroll"><table class="data sortable compare"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _shift_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The experts whose accuracy shifted (``shifted``), or a line saying there are none or no data."""
    have = [r for r in rows if r.get("expert_accuracy_shift")]
    if not have:
        return ""
    flagged = [(r["layer"], x) for r in have for x in r["expert_accuracy_shift"] if x.get("shifted")]
    intro = (
        "<h3>Accuracy shift per expert</h3><p>Top-1 attribution; Δ = accuracy B − A with Newcombe's hybrid "
        "score 95% interval; an expert is <em>shifted</em> when the interval excludes 0.</p>"
    )
    if not flagged:
        return intro + "<p>No expert's accuracy shifted.</p>"
    flagged.sort(key=lambda t: -abs(t[1].get("delta") or 0.0))
    body = "".join(
        f"<tr><td>{e(fmt(lay))}</td><td>{e(fmt(x.get('expert')))}</td>"
        f"<td{_sort(x.get('accuracy_a'))}>{e(pct(x.get('accuracy_a')))} ({e(fmt(x.get('tokens_a')))})</td>"
        f"<td{_sort(x.get('accuracy_b'))}>{e(pct(x.get('accuracy_b')))} ({e(fmt(x.get('tokens_b')))})</td>"
        f"<td{_sort(x.get('delta'))}>{e(_signed(x.get('delta'), 3))}</td>"
        f"<td>[{e(_signed(x.get('delta_ci_low'), 3))}, {e(_signed(x.get('delta_ci_high'), 3))}]</td></tr>"
        for lay, x in flagged
    )
    return (
        intro + '<div class="scroll"><table class="data sortable shifted"><thead><tr><th scope=col>layer</th>'
        "<th scope=col>expert</th><th scope=col>accuracy A (tokens)</th>"
        "<th scope=col>accuracy B (tokens)</th>"
        "<th scope=col>Δ</th><th scope=col>95% interval</th></tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _path_shift_html(paths: Sequence[Mapping[str, Any]] | None) -> str:
    """Full-depth paths tracked in both traces: the shifted ones first, then the most used."""
    if not paths:
        return ""
    shifted = sum(1 for p in paths if p.get("shifted"))
    intro = (
        "<h3>Accuracy shift per routing path</h3><p>Full-depth paths (top-1 expert per layer) tracked in "
        f"both traces with enough tokens in each; {shifted} of {len(paths)} shifted (Newcombe 95% "
        "interval of Δ = accuracy B − A excludes 0). Expert ids compare by number: see the notes.</p>"
    )
    body = "".join(
        f"<tr{' class=bad' if p.get('shifted') else ''}><td>{e('→'.join(map(str, p.get('path') or [])))}</td>"
        f"<td{_sort(p.get('accuracy_a'))}>{e(pct(p.get('accuracy_a')))} ({e(fmt(p.get('tokens_a')))})</td>"
        f"<td{_sort(p.get('accuracy_b'))}>{e(pct(p.get('accuracy_b')))} ({e(fmt(p.get('tokens_b')))})</td>"
        f"<td{_sort(p.get('delta'))}>{e(_signed(p.get('delta'), 3))}</td>"
        f"<td>[{e(_signed(p.get('delta_ci_low'), 3))}, {e(_signed(p.get('delta_ci_high'), 3))}]</td>"
        f"<td>{'shifted' if p.get('shifted') else ''}</td></tr>"
        for p in paths
    )
    return (
        intro + '<div class="scroll"><table class="data sortable paths-shift"><thead><tr>'
        "<th scope=col>path</th><th scope=col>accuracy A (tokens)</th><th scope=col>accuracy B (tokens)</th>"
        "<th scope=col>Δ</th><th scope=col>95% interval</th><th scope=col></th></tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _checkpoint_rows_html(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = (
        ("layer", "layer"),
        ("experts", "num_experts"),
        ("router cosine min", "router_cosine_min"),
        ("(expert)", "router_cosine_min_expert"),
        ("router cosine mean", "router_cosine_mean"),
        ("|Δ selection bias| max", "selection_bias_delta_max_abs"),
    )
    head = "".join(f"<th scope=col>{e(name)}</th>" for name, _ in keys)
    body = "".join(
        "<tr>" + "".join(f"<td{_sort(r.get(k))}>{e(fmt(r.get(k)))}</td>" for _, k in keys) + "</tr>"
        for r in rows
    )
    return (
        f'<div class="scroll"><table class="data sortable compare"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def compare_section(cmp: Any, embed: FigureEmbedder | None = None) -> Section:
    """The ``<section id="compare">``: verdict, inputs, per-layer table, figure and shifted experts."""
    doc = _doc(cmp)
    embed = embed or FigureEmbedder()
    meta = doc.get("meta") or {}
    s = doc.get("summary") or {}
    rows = [r for r in doc.get("layers") or [] if isinstance(r, Mapping)]
    text, _ = compare_verdict(doc)
    info = [
        ("A (reference)", e(str(meta.get("a", "")))),
        ("B", e(str(meta.get("b", "")))),
        ("layers compared", e(fmt(len(rows)))),
    ]
    if meta.get("inputs") == "checkpoints":
        body = f'<p class="compare-verdict">{e(text)}</p>' + kv_table(info) + _checkpoint_rows_html(rows)
        return Section("compare", "Compare: A against B", body)
    info.append(("tokens A / B", f"{e(fmt(s.get('tokens_a')))} / {e(fmt(s.get('tokens_b')))}"))
    info.append(("same tokens (router saturation measured)", e(fmt(bool(s.get("tokens_match"))))))
    for key in ("layers_only_in_a", "layers_only_in_b"):
        if s.get(key):
            info.append((key.replace("_", " "), e(", ".join(str(x) for x in s[key]))))
    if s.get("accuracy_delta") is not None:
        info.append(("accuracy A → B", e(f"{pct(s.get('accuracy_a'))} → {pct(s.get('accuracy_b'))}")))
    notes = "".join(f"<li>{e(str(n))}</li>" for n in s.get("notes") or [])
    body = f'<p class="compare-verdict">{e(text)}</p>' + kv_table(info)
    if notes:
        body += f"<ul class=notes>{notes}</ul>"
    body += _layer_rows_html(rows)
    if rows:
        body += embed(
            partial(compare_figure, rows),
            "Top: Jensen-Shannon divergence (base 2) between A's and B's load shares per layer; 0 = same "
            "shares, 1 = disjoint. Bottom: mean top-k overlap |A∩B|/k on the same tokens (1 = same "
            "choices) against the random baseline k/E (dashed); empty when the traces differ in tokens.",
            FIGURE_ALT,
        )
    body += _shift_html(rows)
    paths = doc.get("paths")
    body += _path_shift_html(paths if isinstance(paths, list) else None)
    return Section("compare", "Compare: A against B", body)


def build_compare_report(cmp: Any, *, title: str | None = None, figures: bool = True) -> Report:
    doc = _doc(cmp)
    meta = doc.get("meta") or {}
    text, vclass = compare_verdict(doc)
    found = [e(str(n)) for n in (doc.get("summary") or {}).get("notes") or []]
    section = compare_section(doc, FigureEmbedder(figures))
    name = f"{_name(meta.get('a'))} vs {_name(meta.get('b'))}"
    return Report(title or f"moediag compare: {name}", text, vclass, found, [section])


def render_compare_report(
    cmp: Any,
    *,
    title: str | None = None,
    figures: bool = True,
    created: str | None = None,
    version: str | None = None,
) -> str:
    """The whole self-contained HTML page for a comparison."""
    return render_html(
        build_compare_report(cmp, title=title, figures=figures), created=created, version=version
    )
