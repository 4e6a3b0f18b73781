"""Terminal renderers: rich tables for each command's result (the only renderers that import rich).

One module per result: ``trace_table`` and ``accuracy_table`` (a trace), ``checkpoint_table``,
``compare_table`` and ``model_compare_table`` (``moediag compare``), ``replay_table``, ``check_table``.
Each takes a library result (or its ``--json`` document) and a rich ``Console``; none decides what is
healthy: verdicts come from :mod:`moediag.analysis.verdict` and the check rules.
"""
