"""Run the accumulators over a trace: chunk -> routed, masked :class:`LayerBatch` -> statistics.

``analyze_trace(path)`` is the library call behind ``moediag inspect TRACE`` (and report, check,
compare); ``trace_stats`` gives the raw mergeable :class:`ModelStats` for a list of chunks, which is
what parallel and distributed runs merge.

Layout: ``collect`` (chunk -> batch -> statistics, and :func:`analyze_trace`), ``result``
(:class:`TraceAnalysis` and its document), ``verdict`` (the one verdict of a trace or a checkpoint),
``frames`` (pandas), ``figures`` (what every figure means), and the parallel execution, which imports
nothing back from here: ``units`` (the plan and the merge tree), ``runners`` (threads, processes, Dask),
``parallel`` (running a plan), ``memory`` (the allocator settings every unit uses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moediag.analysis.collect import (
        add_count_layers,
        analyze_trace,
        check_domains,
        chunk_mask,
        gc_paused,
        layer_batch,
        trace_stats,
    )
    from moediag.analysis.result import JSON_FORMAT, TraceAnalysis

__all__ = [
    "JSON_FORMAT",
    "TraceAnalysis",
    "add_count_layers",
    "analyze_trace",
    "check_domains",
    "chunk_mask",
    "gc_paused",
    "layer_batch",
    "trace_stats",
]

#: lazy exports: importing a light submodule (``memory`` at CLI start, ``figures`` for ``moediag explain``)
#: runs this file, which must not pay for torch
_LAZY = {name: "moediag.analysis.result" for name in ("JSON_FORMAT", "TraceAnalysis")}
_LAZY.update({name: "moediag.analysis.collect" for name in __all__ if name not in _LAZY})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
