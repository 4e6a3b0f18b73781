"""Live statistics: per-layer accumulators for the current window and since the start.

A live consumer (the training :class:`moediag.Monitor`, the serving watcher) feeds routed tokens or expert
counts into :class:`LiveStats` and, at every report, calls :meth:`LiveStats.close_window`. The figures of
a window are computed by the same accumulators and functions as ``moediag inspect``
(:class:`moediag.stats.load.LoadStats` and :class:`moediag.stats.router.RouterStats`), so they carry
inspect's layer keys (``tokens``, ``load``, ``max_vio``, ``cv``, ``entropy_norm``, ``dead_experts``,
``cold_experts``, ``aux_loss``, ``z_loss``, ``router_entropy``, ``margin_mean``, ...) and definitions.

Windows are a ring of mergeable *buckets*: what arrives between two closes is one bucket.

- Without a sliding window (``window_steps`` and ``window_seconds`` both None), a window is exactly one
  bucket: the tokens since the previous close (a tumbling window, what the training monitor reports).
- With ``window_steps=S`` and/or ``window_seconds=T``, a window merges the closed buckets whose steps lie
  in the last S steps and/or whose end lies in the last T seconds (what a serving watcher scrapes).

Memory is bounded by the window, never by the input: at most ``max_buckets`` buckets are kept, each of a
fixed size per layer (O(E) counters and sums plus a fixed margin histogram). When more would be needed, the
two oldest buckets are merged into one: the window's old edge gets coarser (it may then cover a little
more than asked, never less).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from moediag.stats import LayerBatch, StatsOptions
from moediag.stats.layer import core_figures
from moediag.stats.load import LoadStats
from moediag.stats.router import RouterStats
from moediag.stats.state import Accumulator

#: figures of one layer that a live window reports; a subset of inspect's layer keys, same definitions
LAYER_KEYS: tuple[str, ...] = (
    "layer",
    "num_experts",
    "top_k",
    "tokens",
    "source",
    "load",
    "load_share",
    "assignments",
    "max_vio",
    "max_mean",
    "min_mean",
    "cv",
    "gini",
    "entropy_norm",
    "effective_experts",
    "dead_experts",
    "cold_experts",
    "aux_loss",
    "z_loss",
    "router_entropy",
    "router_entropy_norm",
    "confidence",
    "margin_mean",
    "margin_median",
    "margin_p10",
)

DEFAULT_MAX_BUCKETS = 1024


class LiveLayer(Accumulator):
    """One layer's mergeable state in a window: inspect's load and router accumulators."""

    layer: int
    num_experts: int
    top_k: int | None
    cold_eps: float
    load: LoadStats
    router: RouterStats
    count_only: bool
    has_logits: bool

    def __init__(self, layer: int, num_experts: int, top_k: int | None, cold_eps: float = 0.1) -> None:
        self.add_setting("layer", layer)
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        self.add_setting("cold_eps", cold_eps)
        self.add_child("load", LoadStats(num_experts, cold_eps))
        self.add_child("router", RouterStats(num_experts, top_k or 1))
        self.add_state("count_only", False, "or")
        self.add_state("has_logits", False, "or")

    def update(self, batch: LayerBatch) -> None:
        if batch.logits is not None:
            self.has_logits = True
        self.load.update(batch)
        self.router.update(batch)

    def update_counts(self, counts: torch.Tensor) -> None:
        """Count-only data: expert counts ``[S, E]`` (or ``[E]``) without per-token routing."""
        self.count_only = True
        c = counts.to(torch.int64)
        self.load.add_counts(c.sum(0) if c.dim() == 2 else c)

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, LiveLayer)
        if other.num_experts != self.num_experts:
            raise ValueError(
                f"layer {self.layer}: cannot merge {other.num_experts} experts into {self.num_experts}"
            )
        super().merge(other)

    def copy(self) -> LiveLayer:
        out = LiveLayer(self.layer, self.num_experts, self.top_k, self.cold_eps)
        out.merge(self)
        return out

    @property
    def empty(self) -> bool:
        return self.load.tokens == 0 and int(self.load.counts.sum()) == 0

    def compute(self) -> dict[str, Any]:
        """The layer's figures, keyed and defined as in ``inspect --json`` (see :data:`LAYER_KEYS`)."""
        out = core_figures(
            self.layer, self.num_experts, self.top_k, self.load, self.router, self.count_only, self.has_logits
        )
        return {k: out.get(k) for k in LAYER_KEYS}


@dataclass
class Bucket:
    """What arrived between two closes."""

    first_step: int | None = None
    last_step: int | None = None
    started: float = 0.0
    ended: float = 0.0
    layers: dict[int, LiveLayer] = field(default_factory=dict)

    def see(self, step: int | None) -> None:
        if step is None:
            return
        self.first_step = step if self.first_step is None else min(self.first_step, step)
        self.last_step = step if self.last_step is None else max(self.last_step, step)


def _merge_buckets(older: Bucket, newer: Bucket) -> Bucket:
    """One bucket holding both (``older`` closed first)."""
    out = Bucket(started=older.started, ended=newer.ended)
    for b in (older, newer):
        out.see(b.first_step)
        out.see(b.last_step)
        for layer, stats in b.layers.items():
            if layer in out.layers:
                out.layers[layer].merge(stats)
            else:
                out.layers[layer] = stats.copy()
    return out


@dataclass
class WindowReport:
    """What :meth:`LiveStats.close_window` returns: per-layer figures for the window and cumulatively.

    ``layers`` and ``cumulative`` map a layer to its figure dict (inspect's layer keys). ``window`` is the
    ``[first, last]`` steps the window covers (None where no step was given). ``judged`` holds what a
    :class:`~moediag.live.judge.TemporalJudge` added (per layer: ``judged_dead``, ``max_vio_rising``).
    """

    step: int | None
    window: tuple[int | None, int | None]
    started: float
    ended: float
    layers: dict[int, dict[str, Any]]
    cumulative: dict[int, dict[str, Any]]
    judged: dict[int, dict[str, Any]] = field(default_factory=dict)

    def summary(self, which: str = "window") -> dict[str, Any]:
        """Model-level figures of the window (or ``"cumulative"``): worst and mean of the layer figures."""
        rows = list((self.layers if which == "window" else self.cumulative).values())
        return summarise(rows)

    def records(self, *, cumulative: bool = True) -> list[dict[str, Any]]:
        """The JSONL contract records (docs/monitor.md): a ``"layer"`` record per layer, a ``"summary"``."""
        out: list[dict[str, Any]] = []
        window = list(self.window)
        for layer in sorted(self.layers):
            rec: dict[str, Any] = {"kind": "layer", "step": self.step, "window": window}
            rec.update(self.layers[layer])
            rec.update(self.judged.get(layer, {}))
            if cumulative and layer in self.cumulative:
                rec["cumulative"] = {k: v for k, v in self.cumulative[layer].items() if k != "layer"}
            out.append(rec)
        summary: dict[str, Any] = {"kind": "summary", "step": self.step, "window": window}
        summary.update(self.summary("window"))
        summary["judged_dead"] = sum(len(j.get("judged_dead", [])) for j in self.judged.values())
        summary["max_vio_rising"] = sorted(
            layer for layer, j in self.judged.items() if j.get("max_vio_rising")
        )
        if cumulative:
            summary["cumulative"] = self.summary("cumulative")
        out.append(summary)
        return out


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Model-level figures over layer rows: token count, worst and mean MaxVio/CV/entropy/aux/z-loss, and
    the total number of dead and cold experts."""
    rows = list(rows)
    out: dict[str, Any] = {
        "layers": len(rows),
        "tokens": max((r["tokens"] for r in rows if r.get("tokens") is not None), default=None),
    }
    for key, worst in (
        ("max_vio", max),
        ("cv", max),
        ("entropy_norm", min),
        ("aux_loss", max),
        ("z_loss", max),
        ("router_entropy_norm", min),
    ):
        vals = [(r[key], r["layer"]) for r in rows if r.get(key) is not None]
        if not vals:
            out[key] = None
            out[f"{key}_layer"] = None
            out[f"{key}_mean"] = None
            continue
        value, layer = worst(vals, key=lambda t: (t[0], -t[1]) if worst is max else (t[0], t[1]))
        out[key] = value
        out[f"{key}_layer"] = layer
        out[f"{key}_mean"] = sum(v for v, _ in vals) / len(vals)
    out["dead_experts"] = sum(len(r.get("dead_experts") or []) for r in rows)
    out["cold_experts"] = sum(len(r.get("cold_experts") or []) for r in rows)
    return out


class LiveStats:
    """Per-layer accumulators for the open window and since the start (see the module docstring).

    >>> live = LiveStats()                                                     # doctest: +SKIP
    >>> live.update(layer, batch)          # routed tokens, or update_counts(layer, E, counts)
    >>> report = live.close_window(step=100)
    >>> report.layers[layer]["max_vio"], report.cumulative[layer]["max_vio"]
    """

    def __init__(
        self,
        options: StatsOptions | None = None,
        *,
        window_steps: int | None = None,
        window_seconds: float | None = None,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Any = time.monotonic,
    ) -> None:
        if window_steps is not None and window_steps < 1:
            raise ValueError(f"window_steps={window_steps}: must be at least 1")
        if window_seconds is not None and window_seconds <= 0:
            raise ValueError(f"window_seconds={window_seconds}: must be positive")
        if max_buckets < 1:
            raise ValueError(f"max_buckets={max_buckets}: must be at least 1")
        self.options = options or StatsOptions()
        self.window_steps = window_steps
        self.window_seconds = window_seconds
        self.max_buckets = max_buckets
        self.clock = clock
        self.total: dict[int, LiveLayer] = {}
        self.ring: deque[Bucket] = deque()
        self.open = Bucket(started=clock())
        self.windows_closed = 0

    @property
    def sliding(self) -> bool:
        return self.window_steps is not None or self.window_seconds is not None

    def _layer(self, layer: int, num_experts: int, top_k: int | None) -> LiveLayer:
        stats = self.open.layers.get(layer)
        known = stats or self.total.get(layer)
        if known is not None and known.num_experts != num_experts:
            raise ValueError(f"layer {layer}: {num_experts} experts, was {known.num_experts}")
        if stats is None:
            stats = LiveLayer(layer, num_experts, top_k, self.options.cold_eps)
            self.open.layers[layer] = stats
        return stats

    def update(self, layer: int, batch: LayerBatch, step: int | None = None) -> None:
        """Add one routed batch of ``layer`` (valid tokens only, as for inspect's accumulators)."""
        self._layer(layer, batch.num_experts, batch.top_k).update(batch)
        self.open.see(step)

    def update_counts(
        self,
        layer: int,
        num_experts: int,
        counts: torch.Tensor,
        step: int | None = None,
        top_k: int | None = None,
    ) -> None:
        """Add expert counts ``[S, E]`` (or ``[E]``) of ``layer``: count-only figures."""
        if counts.shape[-1] != num_experts:
            raise ValueError(f"layer {layer}: counts have {counts.shape[-1]} experts, expected {num_experts}")
        self._layer(layer, num_experts, top_k).update_counts(counts)
        self.open.see(step)

    def add(self, stats: LiveLayer, step: int | None = None) -> None:
        """Merge an accumulator built elsewhere (a device-side state moved to the host, another process)."""
        mine = self._layer(stats.layer, stats.num_experts, stats.top_k)
        mine.merge(stats)
        self.open.see(step)

    def see_step(self, step: int) -> None:
        """Mark ``step`` as part of the open window (for steps without tokens)."""
        self.open.see(step)

    def close_window(self, step: int | None = None, now: float | None = None) -> WindowReport:
        """Close the open bucket and report the window and the cumulative figures.

        ``step``: the step the report is for (also marked as seen); ``now``: the time (the clock's by
        default), used by ``window_seconds``.
        """
        now = self.clock() if now is None else now
        bucket = self.open
        bucket.see(step)
        bucket.ended = now
        for layer, stats in bucket.layers.items():
            if layer in self.total:
                self.total[layer].merge(stats)
            else:
                self.total[layer] = stats.copy()
        self.ring.append(bucket)
        self.open = Bucket(started=now)
        self._evict(step, now)
        merged: dict[int, LiveLayer] = {}
        first: int | None = None
        last: int | None = None
        for b in self.ring:
            for layer, stats in b.layers.items():
                if layer in merged:
                    merged[layer].merge(stats)
                else:
                    merged[layer] = stats.copy()
            if b.first_step is not None:
                first = b.first_step if first is None else min(first, b.first_step)
            if b.last_step is not None:
                last = b.last_step if last is None else max(last, b.last_step)
        self.windows_closed += 1
        layers = set(self.total)
        window_rows = {
            layer: (merged[layer] if layer in merged else self._empty_like(self.total[layer])).compute()
            for layer in sorted(layers)
        }
        return WindowReport(
            step=step,
            window=(first, last),
            started=self.ring[0].started if self.ring else now,
            ended=now,
            layers=window_rows,
            cumulative={layer: self.total[layer].compute() for layer in sorted(layers)},
        )

    def _empty_like(self, stats: LiveLayer) -> LiveLayer:
        out = LiveLayer(stats.layer, stats.num_experts, stats.top_k, stats.cold_eps)
        out.count_only = stats.count_only
        return out

    def _evict(self, step: int | None, now: float) -> None:
        if not self.sliding:
            while len(self.ring) > 1:
                self.ring.popleft()
            return
        while (
            len(self.ring) > self.max_buckets
        ):  # coarsen the old end: merge, never lose what is in the window
            oldest = self.ring.popleft()
            self.ring[0] = _merge_buckets(oldest, self.ring[0])
        while len(self.ring) > 1:
            oldest = self.ring[0]
            old_by_steps = (
                self.window_steps is not None
                and step is not None
                and oldest.last_step is not None
                and oldest.last_step <= step - self.window_steps
            )
            old_by_time = self.window_seconds is not None and oldest.ended < now - self.window_seconds
            if old_by_steps or old_by_time:
                self.ring.popleft()
            else:
                break

    def reset(self) -> None:
        """Forget everything (the cumulative figures too)."""
        self.total.clear()
        self.ring.clear()
        self.open = Bucket(started=self.clock())
