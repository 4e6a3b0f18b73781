"""Prometheus: live routing figures as metric families on ``/metrics``, and ``/healthz``.

:class:`PrometheusMetrics` owns one ``prometheus_client`` registry. It is a :class:`~moediag.live.sinks.Sink`:
each report's records (the JSONL contract: ``"layer"``, ``"summary"``, ``"alert"``) replace the window
families, so the training :class:`moediag.Monitor` (sink ``"prometheus:HOST:PORT"``) and ``moediag watch``
export the same metrics from the same code. :meth:`PrometheusMetrics.serve` starts the HTTP server.

Every family is listed in :data:`METRICS` (name, type, labels, help); docs/watch.md documents each one.
Label cardinality is bounded: per-layer families have one series a layer, rule families one a rule, and
the per-expert family (``moediag_expert_load_share``) is off unless asked for (``per_expert="all"`` or
``"top:N"``: the N most and N least loaded experts of each layer), and never more than ``max_series``.

A scrape must stay cheap however many experts there are: the window families are rendered once, when a
report arrives, and a scrape sends those bytes plus the few live counters (docs/benchmarks.md: 61 layers
x 256 experts).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moediag.errors import UsageError

Record = Mapping[str, Any]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MAX_SERIES = 20_000


@dataclass(frozen=True)
class MetricDef:
    name: str
    type: str  # gauge | counter
    labels: tuple[str, ...]
    help: str


_LAYER = ("layer",)
#: every family this module exports (watch adds the ``moediag_watch_*`` counters of :data:`WATCH_METRICS`)
METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "moediag_layer_balancedness",
        "gauge",
        _LAYER,
        "Mean over max expert load in the window (SGLang/vLLM balancedness, one expert a rank); 1 = even",
    ),
    MetricDef("moediag_layer_max_vio", "gauge", _LAYER, "MaxVio in the window: max load / fair share - 1"),
    MetricDef("moediag_layer_cv", "gauge", _LAYER, "Coefficient of variation of expert loads in the window"),
    MetricDef(
        "moediag_layer_entropy_norm", "gauge", _LAYER, "Normalised entropy of expert loads in the window"
    ),
    MetricDef(
        "moediag_layer_dead_experts",
        "gauge",
        _LAYER,
        "Experts with no assignment in the window (judged dead over W windows when judged)",
    ),
    MetricDef("moediag_layer_cold_experts", "gauge", _LAYER, "Experts whose share is below cold_eps / E"),
    MetricDef("moediag_layer_window_tokens", "gauge", _LAYER, "Tokens routed in the window"),
    MetricDef("moediag_layer_tokens_total", "counter", _LAYER, "Tokens routed since the start"),
    MetricDef(
        "moediag_layer_assignments_total", "counter", _LAYER, "Top-k assignments counted since the start"
    ),
    MetricDef(
        "moediag_layer_balancedness_cumulative",
        "gauge",
        _LAYER,
        "Mean over max expert load since the start",
    ),
    MetricDef("moediag_layer_max_vio_cumulative", "gauge", _LAYER, "MaxVio since the start"),
    MetricDef(
        "moediag_expert_load_share",
        "gauge",
        ("layer", "expert"),
        "Share of the layer's assignments that went to the expert in the window (only with per-expert on)",
    ),
    MetricDef("moediag_rule_alert", "gauge", ("rule",), "1 while the rule is broken in the latest window"),
    MetricDef(
        "moediag_rule_alert_layers", "gauge", ("rule",), "Layers breaking the rule in the latest window"
    ),
    MetricDef(
        "moediag_alerts_total",
        "counter",
        ("rule",),
        "Alerts raised: a rule and layer that broke the rule after not breaking it in the window before",
    ),
    MetricDef("moediag_window_step", "gauge", (), "Step of the latest report"),
    MetricDef("moediag_window_timestamp_seconds", "gauge", (), "Unix time of the latest report"),
    MetricDef("moediag_windows_total", "counter", (), "Reports received"),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}

#: layer record key -> gauge
_LAYER_GAUGES = {
    "moediag_layer_max_vio": "max_vio",
    "moediag_layer_cv": "cv",
    "moediag_layer_entropy_norm": "entropy_norm",
}


def balancedness(load: Sequence[float] | None) -> float | None:
    """Mean over max expert load (SGLang's and vLLM's balancedness, one expert per rank), or None."""
    if not load:
        return None
    import torch

    from moediag.stats.imbalance import balancedness as mean_over_max

    return mean_over_max(torch.tensor(load, dtype=torch.float64))


def parse_per_expert(spec: str | int | None) -> int | None:
    """``"off"`` -> 0, ``"all"`` -> None (every expert), ``"top:N"`` (or N) -> N."""
    if spec is None:
        return 0
    if isinstance(spec, int):
        if spec < 0:
            raise UsageError(f"--per-expert {spec}: must be off, all or top:N with N >= 1")
        return spec
    s = str(spec).strip().lower()
    if s in ("off", "0", "none", ""):
        return 0
    if s == "all":
        return None
    n = s.removeprefix("top:")
    if n.isdigit() and int(n) >= 1:
        return int(n)
    raise UsageError(f"--per-expert {spec!r}: expected off, all or top:N")


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return float(len(value))
    return None


def _tokens(row: Mapping[str, Any]) -> float | None:
    """Tokens of a figure row; for counts-only data, assignments / top-k when top-k is known."""
    tokens = _num(row.get("tokens"))
    if tokens is None and row.get("top_k") and row.get("assignments") is not None:
        return float(int(row["assignments"]) // int(row["top_k"]))
    return tokens


def _fmt(value: float) -> str:
    return repr(float(value)) if value == value else "NaN"


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class PrometheusMetrics:
    """One registry with moediag's families; a :class:`~moediag.live.sinks.Sink` (``log``/``close``).

    ``rules``: the rule names whose alert state is exported (0 until one breaks). ``per_expert``: ``"off"``
    (default), ``"all"`` or ``"top:N"``. ``health``: returns ``(ok, text)`` for ``/healthz``.
    """

    def __init__(
        self,
        *,
        rules: Iterable[str] = (),
        per_expert: str | int | None = "off",
        max_series: int = DEFAULT_MAX_SERIES,
        registry: CollectorRegistry | None = None,
        health: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.rules = list(dict.fromkeys(rules))
        self.per_expert = parse_per_expert(per_expert)
        self.max_series = max_series
        self.health = health
        self._lock = threading.Lock()
        self._window = b""
        self._firing: set[tuple[str, int | None]] = set()
        self._alert_counts: dict[str, int] = {r: 0 for r in self.rules}
        self._windows = 0
        self.server: MetricsServer | None = None
        self.truncated = False
        self._render(self._families([], []), b"")

    # -- live counters (the watcher's) --------------------------------------------------------------
    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A ``prometheus_client`` counter in this registry (``name`` without the ``_total`` suffix)."""
        return Counter(name, documentation, list(labels), registry=self.registry)

    # -- Sink ---------------------------------------------------------------------------------------
    def log(self, records: Sequence[Record], step: int | None) -> None:
        """Replace the window families with this report's (``"layer"`` and ``"alert"`` records)."""
        import time

        layers = [r for r in records if r.get("kind") == "layer"]
        alerts = [r for r in records if r.get("kind") == "alert"]
        firing = {(str(a.get("rule")), a.get("layer")) for a in alerts}
        for rule, _layer in firing - self._firing:
            self._alert_counts[rule] = self._alert_counts.get(rule, 0) + 1
        self._firing = firing
        self._windows += 1
        families = self._families(layers, alerts)
        families.append(_gauge("moediag_window_step", [((), float(step))] if step is not None else []))
        families.append(_gauge("moediag_window_timestamp_seconds", [((), time.time())]))
        self._render(families, self._expert_text(layers))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    # -- rendering ----------------------------------------------------------------------------------
    def _families(self, layers: list[Record], alerts: list[Record]) -> list[Metric]:
        rows: dict[str, list[tuple[tuple[str, ...], float]]] = {m.name: [] for m in METRICS}
        for rec in sorted(layers, key=lambda r: int(r.get("layer", 0))):
            lab = (str(rec.get("layer")),)
            cum = rec.get("cumulative") or {}
            values: dict[str, float | None] = {
                "moediag_layer_balancedness": balancedness(rec.get("load")),
                "moediag_layer_dead_experts": _num(
                    rec["judged_dead"] if rec.get("judged_dead") is not None else rec.get("dead_experts")
                ),
                "moediag_layer_cold_experts": _num(rec.get("cold_experts")),
                "moediag_layer_window_tokens": _tokens(rec),
                "moediag_layer_tokens_total": _tokens(cum),
                "moediag_layer_assignments_total": _num(cum.get("assignments")),
                "moediag_layer_balancedness_cumulative": balancedness(cum.get("load")),
                "moediag_layer_max_vio_cumulative": _num(cum.get("max_vio")),
            }
            for name, key in _LAYER_GAUGES.items():
                values[name] = _num(rec.get(key))
            for name, value in values.items():
                if value is not None:
                    rows[name].append((lab, value))
        per_rule: dict[str, set[Any]] = {r: set() for r in self.rules}
        for a in alerts:
            per_rule.setdefault(str(a.get("rule")), set()).add(a.get("layer"))
        for rule in per_rule:
            self._alert_counts.setdefault(rule, 0)
        rows["moediag_rule_alert"] = [((r,), 1.0 if per_rule[r] else 0.0) for r in per_rule]
        rows["moediag_rule_alert_layers"] = [((r,), float(len(per_rule[r]))) for r in per_rule]
        rows["moediag_alerts_total"] = [((r,), float(c)) for r, c in self._alert_counts.items()]
        rows["moediag_windows_total"] = [((), float(self._windows))]
        out: list[Metric] = []
        for m in METRICS:
            if m.name in (
                "moediag_expert_load_share",
                "moediag_window_step",
                "moediag_window_timestamp_seconds",
            ):
                continue
            out.append(_family(m, rows[m.name]))
        return out

    def _expert_text(self, layers: list[Record]) -> bytes:
        """``moediag_expert_load_share`` in the text format, written directly (it can have tens of thousands
        of series: prometheus_client's generic renderer would take most of a second)."""
        if self.per_expert == 0:
            return b""
        m = METRICS_BY_NAME["moediag_expert_load_share"]
        out = [f"# HELP {m.name} {m.help}\n# TYPE {m.name} gauge\n"]
        budget = self.max_series
        self.truncated = False
        for rec in sorted(layers, key=lambda r: int(r.get("layer", 0))):
            share = rec.get("load_share")
            if share is None:
                continue
            idx: list[int] = list(range(len(share)))
            top = self.per_expert
            if top is None and len(share) > budget:
                top = max(1, budget // 2)
                self.truncated = True
            if top is not None and 2 * top < len(share):
                order = sorted(idx, key=lambda i: share[i])
                idx = sorted(set(order[:top]) | set(order[-top:]))
            layer = rec.get("layer")
            prefix = f'{m.name}{{layer="{layer}",expert="'
            for i in idx:
                if budget <= 0:
                    self.truncated = True
                    break
                out.append(f'{prefix}{i}"}} {_fmt(share[i])}\n')
                budget -= 1
        return "".join(out).encode()

    def _render(self, families: list[Metric], expert_text: bytes) -> None:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Families(families))
        text = generate_latest(reg) + expert_text
        with self._lock:
            self._window = text

    def render(self) -> bytes:
        """The ``/metrics`` body: the live counters, then the latest report's families."""
        with self._lock:
            window = self._window
        return generate_latest(self.registry) + window

    # -- serving ------------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
        """Start the HTTP server (``/metrics``, ``/healthz``) in a daemon thread; ``port=0`` picks one."""
        self.server = MetricsServer(self, host, port)
        return self.server


def _family(m: MetricDef, rows: list[tuple[tuple[str, ...], float]]) -> Metric:
    if m.type == "counter":
        name = m.name.removesuffix("_total")
        fam: Metric = CounterMetricFamily(name, m.help, labels=list(m.labels))
    else:
        fam = GaugeMetricFamily(m.name, m.help, labels=list(m.labels))
    for labels, value in rows:
        fam.add_metric(list(labels), value)  # type: ignore[attr-defined]
    return fam


def _gauge(name: str, rows: list[tuple[tuple[str, ...], float]]) -> Metric:
    return _family(METRICS_BY_NAME[name], rows)


class MetricsServer:
    """A small threaded HTTP server: ``GET /metrics`` and ``GET /healthz`` (200 ``ok``, or 503 and why)."""

    def __init__(self, metrics: PrometheusMetrics, host: str, port: int) -> None:
        metrics_ref = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics_ref.render(), CONTENT_TYPE)
                elif path == "/healthz":
                    ok, text = metrics_ref.health() if metrics_ref.health else (True, "ok")
                    self._send(200 if ok else 503, (text.rstrip("\n") + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # scrapes are not news

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(f"--listen {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self.httpd.daemon_threads = True
        address = self.httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="moediag-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def parse_listen(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def prometheus_sink(arg: str | None) -> PrometheusMetrics:
    """The ``"prometheus:HOST:PORT"`` sink: the metrics, served from a thread of this process."""
    metrics = PrometheusMetrics(per_expert="off")
    host, port = parse_listen(arg or "127.0.0.1:9464")
    metrics.serve(host, port)
    return metrics
