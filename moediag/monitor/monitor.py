"""``moediag.Monitor``: routing figures while a model trains, every N steps, into trackers, with alerts.

>>> import moediag                                                      # doctest: +SKIP
>>> with moediag.Monitor(model, every=10, sinks=["jsonl:routing.jsonl", "tensorboard:runs/x"]) as mon:
...     for batch in loader:
...         loss = model(**batch).loss        # each top-level forward is a step
...         loss.backward(); opt.step(); opt.zero_grad()

Routers are found as :class:`moediag.Recorder` finds them (``moediag.record.find_routers``), or given with
``routers=``. Each top-level forward of ``model`` in training mode is one step; a loop that accumulates
gradients assigns ``mon.step = global_step`` before each forward (the window then closes when the step
moves to the next window) or calls :meth:`Monitor.end_step` after each optimizer step.

On every step the routers' calls are routed on the model's device and added to device-side sufficient
statistics (:mod:`moediag.monitor.device`) with no host-device synchronisation. Every ``every`` steps the
window is reduced across ranks (``torch.distributed``, when initialised), copied to the host once, and
reported: per-layer figures of the window and cumulatively (inspect's figures, :mod:`moediag.live`), the
temporal judgement (:class:`~moediag.live.judge.TemporalJudge`) and the alerts of the check rule table.
Rank 0 writes the sinks; every rank evaluates the same alerts, so ``on_alert="raise"`` raises everywhere.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from moediag import routing
from moediag.errors import UnsupportedLayoutError, UsageError
from moediag.live.alerts import ON_ALERT, Alert, RoutingAlert, evaluate
from moediag.live.judge import DEFAULT_WINDOWS, TemporalJudge
from moediag.live.sinks import Sink, make_sinks
from moediag.live.window import LiveStats, WindowReport
from moediag.monitor.device import DeviceStats
from moediag.monitor.flight import DEFAULT_MAX_BYTES, FlightRecorder
from moediag.monitor.setup import OnAlert, Rules, resolve_rules, sites_from
from moediag.record.capture import router_output
from moediag.record.discover import RouterSite, find_routers, routing_info
from moediag.stats import StatsOptions
from moediag.trace.schema import SCORE_FUNCTIONS


class Monitor:
    """Live routing statistics of ``model`` (see the module docstring for the whole contract).

    ``every``: report every N steps. ``sinks``: spec strings or :class:`~moediag.live.sinks.Sink` objects.
    ``rules``: the check settings for alerts (see :func:`resolve_rules`). ``on_alert``: ``"warn"``,
    ``"raise"`` (raises :class:`moediag.RoutingAlert`), ``"stop"`` (sets :attr:`should_stop`, which the
    Trainer and Lightning callbacks turn into a stop), ``"ignore"``, or a callable taking the alerts.
    ``windows``: W of the temporal judgement. ``flight_recorder``: keep the last K steps' routing and
    write it as a v1 trace into ``flight_dir`` on an alert, an exception, or :meth:`dump_flight`.
    ``training_only``: forwards in eval mode are not steps. ``hook_forward=False``: no hooks on the
    model's own forward; the caller brackets each forward with :meth:`begin_forward` and
    :meth:`end_forward` (the Lightning callback does). ``process_group``: the group statistics are
    summed over (default: the world; under tensor parallelism pass the data-parallel group, since
    tensor-parallel ranks route the same tokens).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 50,
        sinks: Sequence[str | Sink] | str | Sink | None = None,
        rules: Rules = None,
        on_alert: OnAlert = "warn",
        routers: Sequence[nn.Module] | Mapping[int, nn.Module] | None = None,
        top_k: int | None = None,
        score_function: str | None = None,
        windows: int = DEFAULT_WINDOWS,
        flight_recorder: int = 0,
        flight_logits: bool = False,
        flight_max_bytes: int = DEFAULT_MAX_BYTES,
        flight_dir: str | os.PathLike[str] = "moediag-flight",
        training_only: bool = True,
        hook_forward: bool = True,
        process_group: Any = None,
        options: StatsOptions | None = None,
    ) -> None:
        if every < 1:
            raise UsageError(f"every={every}: must be at least 1")
        if not callable(on_alert) and on_alert not in ON_ALERT:
            raise UsageError(f"on_alert={on_alert!r}: expected one of {', '.join(ON_ALERT)} or a callable")
        if score_function is not None and score_function not in SCORE_FUNCTIONS:
            raise UsageError(
                f"score_function={score_function!r}: expected one of {', '.join(SCORE_FUNCTIONS)}"
            )
        if flight_recorder < 0:
            raise UsageError(f"flight_recorder={flight_recorder}: must be >= 0 steps")
        self.model = model
        self.every = every
        self.config = resolve_rules(rules)
        self.on_alert = on_alert
        self.options = options or StatsOptions(cold_eps=float(self.config["cold_eps"]))
        self.training_only = training_only
        self.hook_forward = hook_forward
        self.process_group = process_group
        self.flight_dir = Path(flight_dir)
        self._sink_specs = sinks
        self._routers = routers
        self._top_k = top_k
        self._score_function = score_function
        self.judge = TemporalJudge(windows, float(self.config["min_expected_load"]))
        self.live = LiveStats(self.options)
        self.flight = (
            FlightRecorder(flight_recorder, logits=flight_logits, max_bytes=flight_max_bytes)
            if flight_recorder
            else None
        )
        #: the current step (0-based); assignable, e.g. ``mon.step = global_step`` before each forward
        self._step = 0
        #: advance the step after each top-level forward (False once the loop assigns ``step``)
        self.auto_step = True
        #: set by ``on_alert="stop"``: the loop (or a callback) should stop training
        self.should_stop = False
        self.alerts: list[Alert] = []
        self.reports = 0
        self.last_report: WindowReport | None = None
        self.flight_traces: list[Path] = []
        self.sinks: list[Sink] = []
        self.sites: list[RouterSite] = []
        self._device_stats: DeviceStats | None = None
        self._handles: list[Any] = []
        self._armed = False
        self._paused = False
        self._source: dict[int, str] = {}
        self._valid: torch.Tensor | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._open: tuple[int, int] | None = None  # first and last step seen in the open window
        self._reported_through: int | None = None
        self._started = False
        self._closed = False
        self._meta: dict[str, str] | None = None
        self._last_dump: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Monitor:
        """Find the routers, install the hooks and open the sinks (``with`` does this)."""
        if self._started:
            return self
        if self._routers is not None:
            self.sites = sites_from(self.model, self._routers, self._top_k)
        else:
            self.sites = find_routers(self.model, top_k=self._top_k)
        if not self.sites:
            raise UnsupportedLayoutError(
                f"no MoE router found in {type(self.model).__name__}: nothing to monitor (a router is a "
                "gate/router module with an [E, H] weight beside an experts module; or pass routers=)"
            )
        missing = [s.layer for s in self.sites if s.top_k is None]
        if missing:
            raise UsageError(f"top-k unknown for layers {missing}: pass Monitor(..., top_k=K)")
        self.info = routing_info(self.model, self.sites, score_function=self._score_function)
        device = self.sites[0].weight.device
        elsewhere = [s.name for s in self.sites if s.weight.device != device]
        if elsewhere:
            raise UsageError(
                f"routers on several devices ({self.sites[0].name} on {device}, {elsewhere[0]} on "
                f"{self.sites[[s.name for s in self.sites].index(elsewhere[0])].weight.device}): the "
                "monitor keeps its statistics on one device; monitor each pipeline stage's module"
            )
        self._device_stats = DeviceStats(
            {s.layer: (s.num_experts, s.top_k) for s in self.sites}, device, self.options.cold_eps
        )
        self._rank = self._get_rank()
        self.sinks = make_sinks(self._sink_specs) if self._rank == 0 else []
        for site in self.sites:
            self._handles.append(site.module.register_forward_hook(self._make_hook(site), with_kwargs=True))
        if self.hook_forward:
            self._handles.append(self.model.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._post, with_kwargs=True))
        self._started = True
        return self

    def _get_rank(self) -> int:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
        return 0

    def close(self) -> None:
        """Report the last (partial) window, remove the hooks and close the sinks."""
        if self._closed or not self._started:
            return
        try:
            if self._open is not None:
                self._report(self._open[1])
        finally:
            self._closed = True
            for h in self._handles:
                h.remove()
            self._handles.clear()
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not isinstance(exc, RoutingAlert) and self.flight is not None:
            self.dump_flight(reason="exception")
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(Exception):  # the original exception matters more
                self.close()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block are neither monitored nor counted as steps (evaluation)."""
        old, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = old

    # -- steps ---------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        """Assigning the step hands step counting to the loop; moving into the next window reports."""
        value = int(value)
        self.auto_step = False
        if value == self._step:
            return
        if self._open is not None and value // self.every != self._open[1] // self.every:
            self._report(self._open[1])
        self._step = value

    def end_step(self) -> WindowReport | None:
        """The current step is complete (callbacks call this after each optimizer step): report when it
        ends a window, then move to the next step. Returns the report, if one was made."""
        report = None
        if self._open is not None and (self._step + 1) % self.every == 0:
            report = self._report(self._open[1])
        self._step += 1
        return report

    def _seen(self, step: int) -> None:
        self._open = (
            (step, step) if self._open is None else (min(self._open[0], step), max(self._open[1], step))
        )

    # -- hooks ---------------------------------------------------------------------------------
    def _active(self) -> bool:
        return not self._paused and not self._closed and (self.model.training or not self.training_only)

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        self.begin_forward(ids, kwargs.get("attention_mask"), kwargs.get("inputs_embeds"))

    def _post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.end_forward()

    def begin_forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> None:
        """Start observing the routers (the top-level forward pre-hook calls this; with
        ``hook_forward=False`` a callback does). ``attention_mask`` [B, S] leaves padding out."""
        if not self._active():
            self._armed = False
            return
        self._armed = True
        self._valid = None
        self._shape = (0, 0)
        for t in (input_ids, inputs_embeds):
            if isinstance(t, torch.Tensor) and t.dim() >= 2:
                self._shape = (int(t.shape[0]), int(t.shape[1]))
                break
        mask = attention_mask
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and self._shape[0]:
            self._valid = mask[:, -self._shape[1] :].reshape(-1).bool()
        if self.flight is not None:
            self.flight.begin(self._step)

    def end_forward(self) -> None:
        """Stop observing: the forward of the current step is done (reports when auto-stepping)."""
        if not self._armed:
            return
        self._armed = False
        step = self._step
        if self.flight is not None:
            self.flight.end(self._valid, *self._shape)
        self._seen(step)
        if self.auto_step:
            if (step + 1) % self.every == 0:
                self._report(step)
            self._step = step + 1

    def _make_hook(self, site: RouterSite) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not self._armed:
                return
            with torch.no_grad():
                self._observe(site, args, kwargs, output)

        return hook

    def _observe(self, site: RouterSite, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        assert self._device_stats is not None and site.top_k is not None
        out = router_output(site, args, kwargs, output, self._source.get(site.layer))
        self._source[site.layer] = out.source
        info = self.info
        bias = site.selection_bias_tensor()  # the live tensor: training may move it
        r = routing.route(
            out.logits,
            spec=info,
            ids=out.ids,
            bias=None if bias is None else bias.float(),
            top_k=site.top_k,
        )
        n = r.ids.shape[0]
        valid = self._valid if self._valid is not None and self._valid.numel() == n else None
        if valid is not None and valid.device != r.ids.device:
            valid = valid.to(r.ids.device, non_blocking=True)
        self._device_stats.update(site.layer, r, valid)
        if self.flight is not None:
            assert r.weights is not None
            self.flight.add_layer(site.layer, r.ids, r.weights, out.logits, site.num_experts)

    # -- reports -------------------------------------------------------------------------------
    def _report(self, step: int) -> WindowReport:
        assert self._device_stats is not None
        stats = self._device_stats
        stats.reduce(self.process_group)
        host = stats.to_host()
        stats.zero()
        first, last = self._open if self._open is not None else (step, step)
        self._open = None
        self._reported_through = step
        for layer_stats in host.values():
            self.live.add(layer_stats, first)
        self.live.see_step(last)
        report = self.live.close_window(step=step)
        self.judge.judge(report)
        alerts = evaluate(report, self.config)
        self.reports += 1
        self.last_report = report
        records = report.records() + [a.record() for a in alerts]
        for sink in self.sinks:
            sink.log(records, step)
        if alerts:
            self.alerts.extend(alerts)
            if self.flight is not None:
                self.dump_flight(reason="alert")
            self._handle(alerts)
        return report

    def _handle(self, alerts: list[Alert]) -> None:
        if callable(self.on_alert):
            self.on_alert(alerts)
            return
        if self.on_alert == "ignore":
            return
        if self.on_alert == "raise":
            raise RoutingAlert(alerts)
        if self.on_alert == "stop":
            self.should_stop = True
        if self._rank == 0:
            for a in alerts:
                warnings.warn(f"moediag: {a.message}", RuntimeWarning, stacklevel=4)

    def report_now(self) -> WindowReport | None:
        """Report the open window now (a collective call under torch.distributed: call it on every rank)."""
        if self._open is None:
            return None
        return self._report(self._open[1])

    # -- flight recorder -----------------------------------------------------------------------
    def trace_metadata(self) -> dict[str, str]:
        if self._meta is None:
            name = getattr(getattr(self.model, "config", None), "name_or_path", None) or None
            extra: dict[str, Any] = {
                "recorder": "moediag.Monitor",
                "model_type": self.info.model_type,
                "routers": {str(s.layer): s.name for s in self.sites},
                **self.info.extra,
                **self.info.layer_overrides,
            }
            self._meta = self.info.metadata(model=str(name) if name else None, domains=None, extra=extra)
        return self._meta

    def dump_flight(self, path: str | os.PathLike[str] | None = None, reason: str = "demand") -> Path | None:
        """Write the flight recorder's steps as a v1 trace (default: ``flight_dir/step-NNNNNNNN``, with a
        ``-rankR`` suffix under torch.distributed). Returns the trace path, or None when nothing is kept.

        An alert writes at most one trace per K steps (the ring's length), so repeated alerts of a
        collapsed run do not write a trace at every report."""
        if self.flight is None or not self.flight.ring:
            return None
        last = self.flight.ring[-1].step
        if reason == "alert" and self._last_dump is not None and last - self._last_dump < self.flight.steps:
            return None
        if path is None:
            suffix = f"-rank{self._rank}" if self._world() > 1 else ""
            path = self.flight_dir / f"step-{last:08d}{suffix}"
        out = self.flight.write(path, self.trace_metadata())
        if out is not None:
            self._last_dump = last
            self.flight_traces.append(out)
        return out

    def _world(self) -> int:
        import torch.distributed as dist

        return int(dist.get_world_size()) if dist.is_available() and dist.is_initialized() else 1
