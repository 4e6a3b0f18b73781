"""One self-contained HTML report: inline CSS, inline SVG (or base64 PNG for big heatmaps), no network.

``render_report(trace, checkpoint=None, checks=None)`` returns the page as a string; ``write_report(path,
html)`` writes it atomically. The page reads fully without scripts; a small inline script only makes the
per-layer table sortable. Nothing in the file points outside it: no CDN, no web fonts, no links but
in-page anchors (tests assert this).

The verdict and findings are the library's (:func:`moediag.analysis.verdict.trace_verdict`,
:func:`~moediag.analysis.verdict.trace_findings`, :func:`~moediag.analysis.verdict.checkpoint_verdict`);
this module only puts them with the sections on one page.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.analysis.verdict import trace_findings
from moediag.io.atomic import write_atomic
from moediag.render.html.checkpoint_sections import checkpoint_sections
from moediag.render.html.embed import FigureEmbedder
from moediag.render.html.markup import e, fmt
from moediag.render.html.page import Report, Section, render_html
from moediag.render.html.trace_sections import serving_section, trace_sections

if TYPE_CHECKING:  # pragma: no cover
    from moediag.analysis import TraceAnalysis


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
        found = [html.escape(x, quote=False) for x in trace_findings(trace)]
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
    write_atomic(target, page.encode("utf-8"))
    return target
