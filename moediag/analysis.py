"""Run the accumulators over a trace: chunk -> routed, masked :class:`LayerBatch` -> statistics.

``analyze_trace(path)`` is the library call behind ``moediag inspect TRACE`` (and report, check,
compare); ``trace_stats`` gives the raw mergeable :class:`ModelStats` for a list of chunks, which is
what parallel and distributed runs merge.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from moediag import __version__, routing
from moediag.errors import InvalidInputError
from moediag.stats import LayerBatch, ModelStats, StatsOptions
from moediag.trace import Chunk, LayerInfo, RoutingSpec, Trace, open_trace
from moediag.verdict import Verdict, trace_verdict

if TYPE_CHECKING:
    import pandas as pd

#: JSON schema version of ``--json`` output (``meta.format``). History: 1 = first release.
JSON_FORMAT = 1

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
        bad = (ids < -1) | (ids >= e)
        if bool(bad.any()):
            row = int(torch.nonzero(bad.any(dim=1))[0])
            value = int(ids[row][bad[row]][0])
            raise InvalidInputError(
                f"layers.{info.layer}.topk_ids: expert id {value} at token {chunk.start + row} is outside "
                f"0..{e - 1} (num_experts={e})",
                chunk.trace.file_for(chunk),
            )
        if bool(keep.any()) and int(ids.max()) >= 0:
            dup = ids.sort(dim=1).values
            repeated = (dup[:, 1:] == dup[:, :-1]) & (dup[:, 1:] >= 0)
            if bool((repeated.any(dim=1) & keep).any()):
                row = int(torch.nonzero(repeated.any(dim=1) & keep)[0])
                raise InvalidInputError(
                    f"layers.{info.layer}.topk_ids: token {chunk.start + row} lists the same expert twice",
                    chunk.trace.file_for(chunk),
                )
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


@dataclass
class TraceAnalysis:
    """The result of analysing a trace: per-layer figures, the summary, and the raw accumulators."""

    path: str
    stats: ModelStats
    options: StatsOptions
    trace_meta: dict[str, Any] = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    _computed: dict[str, Any] | None = None
    #: the check thresholds the verdict uses (None: the rule table's defaults)
    check_config: Any = None
    #: the resolved settings of the run (moediag.options.Resolved), when it came through moediag.inspect
    settings: Any = None

    def computed(self) -> dict[str, Any]:
        if self._computed is None:
            self._computed = self.stats.compute()
        return self._computed

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.computed()["layers"])

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.computed()["summary"])

    def verdict(self, config: Any = None) -> Verdict:
        """The one verdict of this trace (:func:`moediag.verdict.trace_verdict`; ``config``: a
        :class:`~moediag.checks.CheckConfig` whose thresholds judge, default the rule table's)."""
        if config is None and self.check_config is not None:
            config = self.check_config
        return trace_verdict(self, config)

    def layers_frame(self) -> pd.DataFrame:
        """One row per layer (pandas; :func:`moediag.frames.layers_frame`)."""
        from moediag.frames import layers_frame

        return layers_frame(self.layers)

    def experts_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): load, share, dead, cold, accuracy and interval when known."""
        from moediag.frames import experts_frame

        return experts_frame(self.layers)

    def paths_frame(self) -> pd.DataFrame:
        """One row per frequent routing path of each tracked window."""
        from moediag.frames import paths_frame

        return paths_frame(self.summary)

    def layer(self, layer: int) -> dict[str, Any]:
        for row in self.layers:
            if row["layer"] == layer:
                return row
        raise KeyError(layer)

    def to_dict(self, detail: bool = False) -> dict[str, Any]:
        """The ``--json`` document; ``detail`` adds co-activation, per-step load and margin histograms."""
        computed = self.computed()
        layers = []
        for row in computed["layers"]:
            row = dict(row)
            if not detail:
                row.pop("drop_rate_by_position", None)
            else:
                s = self.stats.layers[row["layer"]]
                row["coactivation"] = s.coactivation.pairs.tolist() if not s.count_only else None
                row["step_load"] = s.steps.compute()
                row["margin_histogram"] = s.router.margin_histogram()
            layers.append(row)
        return {
            "meta": {
                "format": JSON_FORMAT,
                "moediag_version": __version__,
                "kind": "trace",
                "path": self.path,
                "created": self.created,
                "options": {
                    "cold_eps": self.options.cold_eps,
                    "capacity_factors": list(self.options.capacity_factors),
                    "capacity_group_tokens": self.options.capacity_group_tokens,
                },
                "trace": self.trace_meta,
            },
            "summary": {**computed["summary"], "verdict": self.verdict().to_dict()},
            "layers": layers,
        }


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
    an open ``runner`` from :func:`moediag.parallel.open_runner`); the result is identical either way
    (moediag.parallel: the trace is cut into units of ``unit_tokens`` that are merged in order).
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
    from moediag.parallel import open_runner, unit_stats

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
