"""The HTML renderers: one self-contained page per report (no network, inline CSS and figures).

Modules: ``page`` (the page skeleton: head, CSS and script from ``render/templates/``, header, footer;
:class:`~moediag.render.html.page.Report` and ``Section``), ``markup`` (escaping and number helpers),
``embed`` (figures as inline SVG or PNG), ``trace_tables`` and ``trace_sections`` (a trace's part),
``checkpoint_summary`` and ``checkpoint_sections`` (a checkpoint's part), ``report`` (trace, checkpoint
and check results on one page) and ``compare`` (``moediag compare --html``). The figures come from
:mod:`moediag.render.plots`; verdicts and findings from :mod:`moediag.analysis.verdict`.

>>> page = render_report(analysis)                                   # doctest: +SKIP
>>> write_report("report.html", page)                                # doctest: +SKIP
"""

from moediag.render.html.compare import render_compare_report
from moediag.render.html.report import build_report, render_report, write_report

__all__ = ["build_report", "render_compare_report", "render_report", "write_report"]
