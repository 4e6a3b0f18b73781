"""``moediag watch``: follow a serving system's routing dumps and keep live statistics.

- :mod:`moediag.watch.follow`: new files, appended lines, rotation, completeness (stable size / rename);
- :mod:`moediag.watch.decoders`: one decoder per format, on the importers' parsing code;
- :mod:`moediag.watch.state`: the small resumable state file, kept outside the watched folders;
- :mod:`moediag.watch.watcher`: :class:`Watcher`, the loop onto :mod:`moediag.live` (windows, judge,
  rules, alerts, sinks) and :class:`moediag.live.prometheus.PrometheusMetrics`.

>>> from moediag.watch import Watcher, WatchOptions                       # doctest: +SKIP
>>> w = Watcher(["dumps/"], WatchOptions("sglang", window_steps=100))
>>> w.poll(); report, alerts = w.report()
"""

from moediag.watch.decoders import DecodeOptions, Observation, WatchFormat
from moediag.watch.watcher import WATCH_COUNTERS, Watcher, WatchOptions

__all__ = ["WATCH_COUNTERS", "DecodeOptions", "Observation", "WatchFormat", "WatchOptions", "Watcher"]
