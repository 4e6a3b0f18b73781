"""Alerts: ``moediag check``'s rule table evaluated on every live window.

:func:`evaluate` hands the window's layer rows to :func:`moediag.checks.run_checks`, the pure core of
``moediag check``, so the rules, thresholds, rounding, ``[tool.moediag.check]`` settings and messages are
the gate's own. Two differences, both from the temporal judge (:mod:`moediag.live.judge`), apply when the
report was judged:

- ``max_dead`` counts the experts *judged dead* (cold for W windows in a row), not the experts that
  happened to get no token in one window;
- a layer whose MaxVio rose for W windows in a row raises the ``max_vio_rising`` alert (there is no
  threshold: ``limit`` is the number of windows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from moediag.checks import CheckConfig, run_checks
from moediag.live.window import WindowReport

#: what ``on_alert`` may be
ON_ALERT = ("warn", "raise", "stop", "ignore")


@dataclass(frozen=True)
class Alert:
    """One rule broken by one layer (or by the model) in one window."""

    step: int | None
    rule: str
    layer: int | None
    value: float | None
    limit: float | None
    message: str

    def record(self) -> dict[str, Any]:
        """The JSONL ``"alert"`` record."""
        return {"kind": "alert", **asdict(self)}


class RoutingAlert(Exception):
    """Raised by ``on_alert="raise"``: the routing broke a rule. ``alerts`` lists every broken rule."""

    def __init__(self, alerts: list[Alert]) -> None:
        self.alerts = list(alerts)
        first = self.alerts[0].message if self.alerts else "routing alert"
        more = f" (and {len(self.alerts) - 1} more)" if len(self.alerts) > 1 else ""
        super().__init__(first + more)


AlertHandler = Callable[[list[Alert]], Any]


def evaluate(report: WindowReport, config: CheckConfig | None = None) -> list[Alert]:
    """The alerts of one window: every failing result of the check rule table, then the judge's flags."""
    config = config or CheckConfig()
    rows: list[dict[str, Any]] = []
    for layer, row in report.layers.items():
        r = dict(row)
        judged = report.judged.get(layer)
        if judged is not None:
            r["dead_experts"] = list(judged.get("judged_dead", []))
        rows.append(r)
    doc = {"meta": {"kind": "trace"}, "layers": rows}
    result = run_checks(doc, config, allow_empty=True)  # a quiet window is no alert (nor an error)
    where = "" if report.step is None else f"step {report.step}: "
    alerts: list[Alert] = []
    for outcome in result.outcomes:
        for failed in outcome.failures:
            alerts.append(
                Alert(
                    step=report.step,
                    rule=outcome.name,
                    layer=failed.layer,
                    value=failed.value,
                    limit=failed.threshold,
                    message=where + failed.message(),
                )
            )
    for layer in sorted(report.judged):
        judged = report.judged[layer]
        if judged.get("max_vio_rising"):
            n = int(judged.get("max_vio_rising_windows", 0))
            vio = report.layers.get(layer, {}).get("max_vio")
            alerts.append(
                Alert(
                    step=report.step,
                    rule="max_vio_rising",
                    layer=layer,
                    value=vio,
                    limit=float(n),
                    message=f"{where}layer {layer}: MaxVio rose {n} windows in a row (now {vio:.3f})",
                )
            )
    return alerts
