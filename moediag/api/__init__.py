"""The library behind every command: ``moediag.inspect``, ``moediag.check`` and ``moediag.report``.

>>> import moediag
>>> analysis = moediag.inspect("sample_traces/imbalanced.safetensors")
>>> analysis.verdict().text
'IMBALANCED: worst MaxVio 2.55 at layer 3 (balanced = 0); fails max_vio, max_cv'
>>> report = moediag.check("sample_traces/imbalanced.safetensors", max_vio=3.0)
>>> report.status
'fail'
>>> report.frame()                                                      # doctest: +SKIP
>>> moediag.report(["sample_traces/imbalanced.safetensors"], "report.html")  # doctest: +SKIP

The CLI commands are thin adapters over these (argument parsing, a progress bar, rendering). Settings come
from :mod:`moediag.options` (defaults < ``[tool.moediag]`` tables < arguments), as on the command line.

Layout: ``inspection`` (inspect), ``checking`` (check), ``reporting`` (report), ``progress`` (the progress
callbacks the commands pass in).
"""

from __future__ import annotations

from moediag.api.checking import check, check_document, load_baseline
from moediag.api.inspection import inspect, inspect_checkpoint, inspect_trace, routing_overrides
from moediag.api.progress import ByteProgress, Progress
from moediag.api.reporting import report

__all__ = [
    "ByteProgress",
    "Progress",
    "check",
    "check_document",
    "inspect",
    "inspect_checkpoint",
    "inspect_trace",
    "load_baseline",
    "report",
    "routing_overrides",
]
