"""Live routing statistics shared by the training monitor and the serving watcher.

- :mod:`moediag.live.window`: :class:`LiveStats`, per-layer window and cumulative accumulators built on
  inspect's (same figures, same definitions), tumbling or sliding (by steps and/or seconds);
- :mod:`moediag.live.judge`: :class:`TemporalJudge`, dead experts and rising MaxVio over W windows;
- :mod:`moediag.live.alerts`: :func:`evaluate`, the ``moediag check`` rule table on each window;
- :mod:`moediag.live.sinks`: the :class:`Sink` protocol and the ``"jsonl:PATH"``-style registry.
"""

from moediag.live.alerts import Alert, RoutingAlert, evaluate
from moediag.live.judge import TemporalJudge
from moediag.live.sinks import Sink, make_sink, make_sinks, register_sink
from moediag.live.window import LiveLayer, LiveStats, WindowReport

__all__ = [
    "Alert",
    "LiveLayer",
    "LiveStats",
    "RoutingAlert",
    "Sink",
    "TemporalJudge",
    "WindowReport",
    "evaluate",
    "make_sink",
    "make_sinks",
    "register_sink",
]
