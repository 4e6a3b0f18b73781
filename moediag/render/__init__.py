"""Renderers: library results (or their ``--json`` documents) as tables, pages, figures and CI formats.

- ``terminal/``: rich tables, one module per command's result (the only renderers that import rich);
- ``html/``: the self-contained HTML report and the compare page;
- ``plots/``: matplotlib figures (imported lazily, Agg backend; only here);
- ``check_formats`` (JSON, JUnit, Markdown, GitHub annotations of a check report) and ``check_cells``
  (one rule outcome as text, shared by the Markdown and terminal tables).

No renderer judges: verdicts, findings and thresholds come from :mod:`moediag.analysis.verdict` and the
check rule table. tests/render/test_layout.py holds these rules.
"""
