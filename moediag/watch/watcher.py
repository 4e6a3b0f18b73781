"""The watcher: follow dumps -> decode -> live statistics -> windows, rules, alerts -> sinks and metrics.

Everything after decoding is the training monitor's machinery (:mod:`moediag.live`): the same
:class:`~moediag.live.window.LiveStats` windows (sliding by steps and/or seconds), the same
:class:`~moediag.live.judge.TemporalJudge`, the same rule table through :func:`moediag.live.alerts.evaluate`,
and the same sinks, of which :class:`~moediag.live.prometheus.PrometheusMetrics` is one.

A malformed file (or line) is skipped with one log line and counted; a missing fact that a flag must give
(``--num-experts``) stops the watcher, since every later file would fail the same way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag.checks import CheckConfig
from moediag.errors import InvalidInputError, MissingMetadataError, MoediagError, UsageError
from moediag.live.alerts import Alert, evaluate
from moediag.live.judge import DEFAULT_WINDOWS, TemporalJudge
from moediag.live.sinks import Sink
from moediag.live.window import LiveLayer, LiveStats, WindowReport
from moediag.stats import StatsOptions
from moediag.watch.decoders import DecodeOptions, Decoder, Observation, WatchFormat, make_decoder
from moediag.watch.follow import Follower, NewLines, WholeFile
from moediag.watch.state import WatchState, check_outside, load_state, save_state

#: the watcher's own counters (``moediag_watch_<name>_total``): name -> help
WATCH_COUNTERS: dict[str, str] = {
    "files": "Dump files read (whole files decoded, appendable files followed)",
    "bad_files": "Dump files skipped because they could not be decoded (one log line each)",
    "bad_lines": "Appended lines skipped because they could not be decoded",
    "records": "Records decoded (a stat dump, a forward pass, a request, a JSONL record)",
    "steps": "Steps ingested (buffer slots, forward passes, iterations, requests)",
    "tokens": "Tokens ingested (per-token dumps; counts dumps when top_k is known)",
}


def stderr_log(message: str) -> None:
    print(f"moediag watch: {message}", file=sys.stderr, flush=True)


@dataclass
class WatchOptions:
    """How to follow and judge (the CLI maps flags onto these)."""

    format: WatchFormat | str
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    window_steps: int | None = None
    window_seconds: float | None = 60.0
    #: seconds between polls; a window report follows every poll
    interval: float = 1.0
    #: seconds a whole file's size and mtime must stay unchanged before it is read
    settle: float = 1.0
    judge_windows: int = DEFAULT_WINDOWS
    #: the rule table's settings; None = no rules
    check: CheckConfig | None = field(default_factory=CheckConfig)
    state_path: Path | None = None
    #: seconds between state saves while data arrives (always saved at exit)
    save_every: float = 5.0
    #: per-poll buckets a window is made of, at most (older ones are merged): bounds memory
    max_buckets: int = 64


class Watcher:
    """Follows ``sources`` and keeps live statistics. Call :meth:`poll` and :meth:`report`, or :meth:`run`.

    >>> w = Watcher(["dumps/"], WatchOptions("sglang"), sinks=[metrics])           # doctest: +SKIP
    >>> w.run(stop_event)                                 # until stop_event is set (SIGTERM in the CLI)
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        options: WatchOptions,
        *,
        sinks: Sequence[Sink] = (),
        log: Callable[[str], None] = stderr_log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = [Path(s) for s in sources]
        for src in self.sources:
            if not src.exists():
                raise InvalidInputError("no such file or folder to watch", src)
        self.options = options
        self.format = WatchFormat(options.format)
        self.decoder: Decoder = make_decoder(self.format, options.decode)
        self.sinks = list(sinks)
        self.log = log
        self.clock = clock
        cold_eps = float(options.check["cold_eps"]) if options.check is not None else 0.1
        self.live = LiveStats(
            StatsOptions(cold_eps=cold_eps),
            window_steps=options.window_steps,
            window_seconds=options.window_seconds,
            max_buckets=options.max_buckets,
            clock=clock,
        )
        min_load = float(options.check["min_expected_load"]) if options.check is not None else 20.0
        self.judge = TemporalJudge(options.judge_windows, min_load)
        self.counters: dict[str, int] = {k: 0 for k in WATCH_COUNTERS}
        self.step = 0
        self.firing: set[tuple[str, int | None]] = set()
        self.alerts_seen = 0
        self.last_poll = clock()
        self._last_save = clock()
        self._dirty = False
        self.state_path = options.state_path
        states = {}
        if self.state_path is not None:
            check_outside(self.state_path, self.sources)
            saved = load_state(self.state_path, self.sources, self.format.value)
            if saved is not None:
                states = {f.key: f for f in saved.files}
                self.counters.update({k: v for k, v in saved.counters.items() if k in self.counters})
                self.step = saved.step
                self._restore(saved.cumulative)
        self.follower = Follower(
            self.sources, self.decoder.wants, self.decoder.appendable, settle=options.settle, states=states
        )
        self._counter_hooks: list[Callable[[str, int], None]] = []

    # -- counters -----------------------------------------------------------------------------------
    def on_count(self, hook: Callable[[str, int], None]) -> None:
        """Call ``hook(name, increment)`` whenever a watch counter moves (the Prometheus counters)."""
        self._counter_hooks.append(hook)
        for name, value in self.counters.items():
            if value:
                hook(name, value)

    def _count(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.counters[name] += n
        for hook in self._counter_hooks:
            hook(name, n)

    # -- ingest -------------------------------------------------------------------------------------
    def poll(self) -> int:
        """Read what became readable; returns the number of records ingested."""
        self.last_poll = self.clock()
        ingested = 0
        items = self.follower.poll()
        for path, problem in self.follower.problems:
            self.log(f"{path}: {problem}")
        self.follower.problems.clear()
        for item in items:
            if isinstance(item, WholeFile):
                ingested += self._whole(item)
            else:
                ingested += self._lines(item)
        if ingested:
            self._dirty = True
        if self._dirty and self.clock() - self._last_save >= self.options.save_every:
            self.save()
        return ingested

    def _whole(self, item: WholeFile) -> int:
        """Decode a complete file. Dump formats are decoded whole before anything is counted, so a file
        that fails half-way adds nothing; traces stream chunk by chunk (memory bounded by a chunk: their
        headers were validated when opened), and a failure after the first chunk keeps what was read."""
        streamed = 0
        observations: list[Observation] = []
        try:
            decoded = self.decoder.decode_file(item.path)
            if self.decoder.streams:
                for obs in decoded:
                    self._ingest(obs)
                    streamed += 1
            else:
                observations = list(decoded)
        except MissingMetadataError:
            raise
        except Exception as exc:  # malformed, or unforeseen: skip the file, never crash the daemon
            kept = f" ({streamed} records before the problem were kept)" if streamed else ""
            self.log(f"skipped {item.path}: {_reason(exc, item.path)}{kept}")
            self._count("bad_files")
            Follower.mark_done(item.state, failed=not streamed)
            self._dirty = True
            return streamed
        Follower.mark_done(item.state)
        self._count("files")
        for obs in observations:
            self._ingest(obs)
        return streamed + len(observations)

    def _lines(self, item: NewLines) -> int:
        if item.first_line == 1 and item.lines:
            self._count("files")
        n = 0
        for i, line in enumerate(item.lines):
            lineno = item.first_line + i
            try:
                observations = list(self.decoder.decode_line(item.path, lineno, line))
            except MissingMetadataError:
                raise
            except Exception as exc:
                reason = _reason(exc, item.path)
                self.log(f"skipped {item.path} line {lineno}: {reason.removeprefix(f'line {lineno}: ')}")
                self._count("bad_lines")
                continue
            for obs in observations:
                self._ingest(obs)
                n += 1
        return n

    def _ingest(self, obs: Observation) -> None:
        self.step += obs.steps
        for layer, batch in obs.batches.items():
            self.live.update(layer, batch, step=self.step)
        for layer, counts in obs.counts.items():
            self.live.update_counts(layer, obs.num_experts, counts, step=self.step, top_k=obs.top_k)
        self._count("records")
        self._count("steps", obs.steps)
        self._count("tokens", obs.tokens)

    # -- report -------------------------------------------------------------------------------------
    def report(self, now: float | None = None) -> tuple[WindowReport, list[Alert]]:
        """Close a window: figures, temporal judgement, rules; alerts that start are logged, every sink
        gets the records."""
        rep = self.live.close_window(step=self.step, now=now)
        self.judge.judge(rep)
        alerts = evaluate(rep, self.options.check) if self.options.check is not None else []
        firing = {(a.rule, a.layer) for a in alerts}
        for a in alerts:
            if (a.rule, a.layer) not in self.firing:
                self.log(f"alert: {a.message}")
                self.alerts_seen += 1
        for rule, layer in sorted(self.firing - firing, key=str):
            self.log(f"resolved: {rule}" + ("" if layer is None else f" on layer {layer}"))
        self.firing = firing
        records = rep.records() + [a.record() for a in alerts]
        for sink in self.sinks:
            sink.log(records, self.step)
        return rep, alerts

    def rules(self) -> list[str]:
        """The rules evaluated on each window (for the alert-state gauges)."""
        if self.options.check is None:
            return []
        from moediag.checks import RULES

        names = [r.name for r in RULES if self.options.check[r.name] is not None and "trace" in r.kinds]
        return names + ["max_vio_rising"]

    # -- run ----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, exit_on_alert: bool = False) -> int:
        """Poll and report every ``interval`` seconds until ``stop`` is set; returns 1 when it stopped on
        an alert (``exit_on_alert``), else 0. The state is saved at the end."""
        try:
            while not stop.is_set():
                self.poll()
                _, alerts = self.report()
                if exit_on_alert and alerts:
                    return 1
                stop.wait(self.options.interval)
            return 0
        finally:
            self.save()

    def healthy(self) -> tuple[bool, str]:
        """``/healthz``: ok while the poll loop is alive."""
        late = self.clock() - self.last_poll
        limit = max(10 * self.options.interval, 30.0)
        if late > limit:
            return False, f"stalled: no poll for {late:.0f} s"
        return (
            True,
            f"ok: {self.counters['files']} files, {self.step} steps, {self.counters['bad_files']} bad",
        )

    # -- state --------------------------------------------------------------------------------------
    def save(self) -> None:
        self._last_save = self.clock()
        self._dirty = False
        if self.state_path is None:
            return
        state = WatchState(
            source=[str(p.resolve()) for p in self.sources],
            format=self.format.value,
            files=list(self.follower.states.values()),
            counters=dict(self.counters),
            step=self.step,
            cumulative=self._cumulative(),
        )
        save_state(self.state_path, state)

    def _cumulative(self) -> dict[int, dict[str, Any]]:
        totals: dict[int, LiveLayer] = {}
        for layer, stats in self.live.total.items():
            totals[layer] = stats.copy()
        for layer, stats in self.live.open.layers.items():  # what arrived since the last report
            if layer in totals:
                totals[layer].merge(stats)
            else:
                totals[layer] = stats.copy()
        return {
            layer: {
                "num_experts": s.num_experts,
                "top_k": s.top_k,
                "counts": s.load.counts.tolist(),
                "top1_counts": s.load.top1_counts.tolist(),
                "tokens": s.load.tokens,
                "empty_slots": s.load.empty_slots,
                "count_only": s.count_only,
            }
            for layer, s in sorted(totals.items())
        }

    def _restore(self, cumulative: dict[int, dict[str, Any]]) -> None:
        for layer, d in cumulative.items():
            s = LiveLayer(layer, int(d["num_experts"]), d.get("top_k"), self.live.options.cold_eps)
            s.load.counts = torch.tensor(d["counts"], dtype=torch.int64)
            s.load.top1_counts = torch.tensor(d["top1_counts"], dtype=torch.int64)
            s.load.tokens = int(d["tokens"])
            s.load.empty_slots = int(d.get("empty_slots", 0))
            s.count_only = bool(d.get("count_only", False))
            if s.load.counts.shape != (s.num_experts,):
                raise UsageError(f"watch state: layer {layer} has a load of the wrong size")
            self.live.total[layer] = s


def _reason(exc: BaseException, path: Path) -> str:
    """The error's text without the file name (the log line names it first)."""
    return exc.message if isinstance(exc, MoediagError) else f"{type(exc).__name__}: {exc}"
