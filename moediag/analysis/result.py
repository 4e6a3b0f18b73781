"""The result of analysing a trace (:class:`TraceAnalysis`): per-layer rows, the summary with its verdict,
the ``inspect --json`` document, and pandas frames.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moediag.analysis.verdict import Verdict, trace_verdict
from moediag.io import envelope
from moediag.stats import ModelStats, StatsOptions

if TYPE_CHECKING:
    import pandas as pd


#: JSON schema version of ``--json`` output (``meta.format``). History: 1 = first release.
JSON_FORMAT = 1


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
        """The one verdict of this trace (:func:`moediag.analysis.verdict.trace_verdict`; ``config``: a
        :class:`~moediag.checks.CheckConfig` whose thresholds judge, default the rule table's)."""
        if config is None and self.check_config is not None:
            config = self.check_config
        return trace_verdict(self, config)

    def layers_frame(self) -> pd.DataFrame:
        """One row per layer (pandas; :func:`moediag.analysis.frames.layers_frame`)."""
        from moediag.analysis.frames import layers_frame

        return layers_frame(self.layers)

    def experts_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): load, share, dead, cold, accuracy and interval when known."""
        from moediag.analysis.frames import experts_frame

        return experts_frame(self.layers)

    def paths_frame(self) -> pd.DataFrame:
        """One row per frequent routing path of each tracked window."""
        from moediag.analysis.frames import paths_frame

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
                row["coactivation"] = s.coactivation.to_json() if not s.count_only else None
                row["step_load"] = s.steps.compute()
                row["margin_histogram"] = s.router.margin_histogram()
            layers.append(row)
        return {
            "meta": envelope.meta(
                "trace",
                JSON_FORMAT,
                created=self.created,
                path=self.path,
                options=envelope.options_of(self.options),
                trace=self.trace_meta,
            ),
            "summary": {**computed["summary"], "verdict": self.verdict().to_dict()},
            "layers": layers,
        }
