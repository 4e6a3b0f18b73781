"""Collect: turn each chunk of a trace into the batch every accumulator reads (through
:func:`moediag.routing.route`, the one routing path) and feed the statistics; :func:`analyze_trace` runs
that over a trace, serially or in parallel (:mod:`moediag.analysis.units`), and returns the result.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from moediag import routing
from moediag.analysis.result import TraceAnalysis
from moediag.errors import InvalidInputError
from moediag.stats import LayerBatch, ModelStats, StatsOptions
from moediag.trace import Chunk, LayerInfo, RoutingSpec, Trace, open_trace
from moediag.trace.reader import check_topk_ids

ProgressFn = Callable[[int], None]


def layer_batch(
    chunk: Chunk, info: LayerInfo, bias: torch.Tensor | None, valid: torch.Tensor | None
) -> tuple[LayerBatch, int]:
    """Route one chunk of one layer. Returns the batch of valid rows and the count of non-finite rows."""
    spec = info.spec
    e = info.num_experts
    k = spec.top_k
    assert k is not None
    logits = chunk.layer_tensor(info.layer, "router_logits")
    ids = chunk.layer_tensor(info.layer, "topk_ids")
    weights = chunk.layer_tensor(info.layer, "topk_weights")
    n = len(chunk)
    keep = torch.ones(n, dtype=torch.bool) if valid is None else valid.clone()
    nonfinite = 0
    if logits is not None:
        logits = logits.float()
        finite = torch.isfinite(logits.sum(dim=-1))  # NaN/Inf propagate; huge rows are rechecked below
        if not bool(finite.all()):
            suspect = ~finite
            finite[suspect] = torch.isfinite(logits[suspect]).all(dim=-1)
        nonfinite = int((keep & ~finite).sum())
        keep &= finite
    if ids is not None:
        ids = ids.to(torch.int64)
        check_topk_ids(ids, e, keep, info.layer, chunk.start, chunk.trace.file_for(chunk))
    sel_idx = keep if bool((~keep).any()) else None

    if sel_idx is not None:
        logits, ids, weights = (t if t is None else t[sel_idx] for t in (logits, ids, weights))
    index = chunk.index if sel_idx is None else chunk.index[sel_idx]
    routed = routing.route(logits, spec=spec, ids=ids, weights=weights, bias=bias)
    batch = routed.batch(num_experts=e, top_k=k, index=index)
    for name in ("sequence_ids", "positions", "step"):
        t = chunk.token(name)
        if t is not None:
            t = t.to(torch.int64)
            setattr(batch, name, t if sel_idx is None else t[sel_idx])
    for name, dtype in (
        ("correct", torch.bool),
        ("loss", torch.float64),
        ("domain", torch.int64),
        ("input_ids", torch.int64),
    ):
        t = chunk.token(name)
        if t is not None:
            t = t.to(dtype)
            if name == "domain":
                check_domains(chunk, t)
            setattr(batch, name, t if sel_idx is None else t[sel_idx])
    return batch, nonfinite


#: without a ``domains`` list in the metadata, domain ids must stay below this
MAX_UNNAMED_DOMAINS = 4096


def check_domains(chunk: Chunk, domain: torch.Tensor) -> None:
    """``tokens.domain`` indexes metadata ``domains``; a wild value must not size a table."""
    if not domain.numel():
        return
    names = chunk.trace.meta.domains
    limit = len(names) if names else MAX_UNNAMED_DOMAINS
    low, high = int(domain.min()), int(domain.max())
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        what = f"the {len(names)} names in metadata domains" if names else f"{limit} (no domains metadata)"
        raise InvalidInputError(f"tokens.domain value {bad} is outside {what}", chunk.trace.file_for(chunk))


def chunk_mask(chunk: Chunk) -> torch.Tensor | None:
    mask = chunk.token("mask")
    return None if mask is None else mask.to(torch.bool)


_gc_lock = threading.Lock()
_gc_pausers = 0  # callers inside gc_paused
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while statistics stream (nested and thread-safe).

    Every torch call makes tensor objects, so the collector would run thousands of times per unit (3% of
    the time in a profile) for nothing: the loop makes no reference cycles. It is switched back on when
    the last user leaves, unless it was off before it was first paused. The collector is process-wide, so
    it is off for every thread while any analysis streams.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def trace_stats(
    trace: Trace,
    chunks: Iterable[Chunk],
    options: StatsOptions | None = None,
    progress: ProgressFn | None = None,
    layers: Iterable[int] | None = None,
) -> ModelStats:
    """Statistics of the given chunks of ``trace`` (count-only layers are added once, not per chunk)."""
    stats = ModelStats(options)
    wanted = sorted(trace.layers) if layers is None else sorted(layers)
    for layer in wanted:
        info = trace.layers[layer]
        stats.layer(layer, info.num_experts, info.spec.top_k)
    with gc_paused():
        _add_chunks(trace, stats, chunks, wanted, progress)
    return stats


def _add_chunks(
    trace: Trace, stats: ModelStats, chunks: Iterable[Chunk], wanted: list[int], progress: ProgressFn | None
) -> None:
    biases: dict[tuple[int, int], torch.Tensor | None] = {}  # (shard, layer): the bias may move in training
    for chunk in chunks:
        valid = chunk_mask(chunk)
        paths = stats.chunk_paths(chunk.start, len(chunk))
        for layer in wanted:
            info = trace.layers[layer]
            if info.count_only:
                continue
            key = (chunk.shard_index, layer)
            if key not in biases:
                biases[key] = trace.selection_bias(layer, chunk.shard_index)
            batch, nonfinite = layer_batch(chunk, info, biases[key], valid)
            target = stats.layers[layer]
            target.excluded_nonfinite += nonfinite
            target.update(batch)
            if paths is not None:
                paths.add(layer, batch)
        if paths is not None:
            stats.update_paths(paths)
        if progress is not None:
            progress(len(chunk))


def add_count_layers(trace: Trace, stats: ModelStats, layers: Iterable[int] | None = None) -> None:
    for layer in sorted(trace.layers) if layers is None else layers:
        info = trace.layers[layer]
        if info.count_only:
            stats.layer(layer, info.num_experts, info.spec.top_k).update_counts(trace.expert_counts(layer))


def analyze_trace(
    path: str | os.PathLike[str] | Trace,
    *,
    options: StatsOptions | None = None,
    overrides: RoutingSpec | None = None,
    chunk_tokens: int | None = None,
    progress: ProgressFn | None = None,
    layers: Iterable[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    runner: Any = None,
    unit_tokens: int | None = None,
) -> TraceAnalysis:
    """Open (if needed) and analyse a whole trace, streaming in chunks.

    By default units run side by side in threads of this process; ``workers=1`` runs them one after
    another, ``workers=N`` on N local processes, ``scheduler="tcp://host:8786"`` on a Dask cluster (or pass
    an open ``runner`` from :func:`moediag.analysis.runners.open_runner`); the result is identical either way
    (moediag.analysis.parallel: the trace is cut into units of ``unit_tokens`` that are merged in order).
    """
    trace = path if isinstance(path, Trace) else open_trace(path, overrides=overrides)
    options = options or StatsOptions()
    if layers is not None:
        layers = list(layers)
        missing = [x for x in layers if x not in trace.layers]
        if missing:
            raise InvalidInputError(
                f"layer {missing[0]} is not in the trace "
                f"(layers: {', '.join(map(str, sorted(trace.layers)))})",
                trace.path,
            )
    from moediag.analysis.parallel import unit_stats
    from moediag.analysis.runners import open_runner

    own = runner is None and (workers is not None or scheduler is not None)
    with open_runner(workers, scheduler) if own else contextlib.nullcontext(runner) as active:
        stats = unit_stats(
            trace,
            collect=trace_stats,
            options=options,
            chunk_tokens=chunk_tokens,
            unit_tokens=unit_tokens,
            layers=layers,
            progress=progress,
            runner=active,
            local_threads=1 if workers == 1 else None,
        )
    add_count_layers(trace, stats, layers)
    meta = {
        "model": trace.meta.model,
        "shards": len(trace.shards),
        "tokens": trace.num_tokens,
        "domains": trace.meta.domains,
        "token_fields": sorted(trace.token_fields),
    }
    return TraceAnalysis(str(trace.path), stats, options, meta)
