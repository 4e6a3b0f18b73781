"""Prometheus metrics: families, values, bounded series, the HTTP server, and docs for every metric."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moediag.errors import UsageError
from moediag.live.prometheus import METRICS, PrometheusMetrics, balancedness, parse_listen, parse_per_expert
from moediag.live.sinks import make_sink
from moediag.watch import WATCH_COUNTERS

ROOT = Path(__file__).resolve().parents[2]


def _records(layers: int = 3, experts: int = 4) -> list[dict]:
    out = []
    for layer in range(layers):
        load = [10 * (layer + 1)] + [10] * (experts - 1)
        total = sum(load)
        out.append(
            {
                "kind": "layer",
                "layer": layer,
                "tokens": total // 2,
                "load": load,
                "load_share": [x / total for x in load],
                "max_vio": max(load) / (total / experts) - 1,
                "cv": 0.1,
                "entropy_norm": 0.9,
                "dead_experts": [],
                "judged_dead": [experts - 1] if layer == 2 else [],
                "cold_experts": [],
                "cumulative": {"tokens": 1000 + layer, "assignments": 2000, "load": load, "max_vio": 0.5},
            }
        )
    out.append({"kind": "summary", "layers": layers})
    out.append({"kind": "alert", "rule": "max_vio", "layer": 2, "value": 1.0, "limit": 0.5, "message": "x"})
    return out


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_families_and_values_parse_with_prometheus_client() -> None:
    m = PrometheusMetrics(rules=["max_vio", "max_cv"])
    m.log(_records(), step=7)
    s = _samples(m.render().decode())
    for layer in range(3):
        lab = (("layer", str(layer)),)
        load = [10 * (layer + 1), 10, 10, 10]
        assert s[("moediag_layer_balancedness", lab)] == pytest.approx(sum(load) / 4 / max(load))
        assert s[("moediag_layer_tokens_total", lab)] == 1000 + layer
        assert s[("moediag_layer_cv", lab)] == 0.1
    assert s[("moediag_layer_dead_experts", (("layer", "2"),))] == 1  # judged dead counts when judged
    assert s[("moediag_rule_alert", (("rule", "max_vio"),))] == 1
    assert s[("moediag_rule_alert", (("rule", "max_cv"),))] == 0
    assert s[("moediag_window_step", ())] == 7
    assert not any(name == "moediag_expert_load_share" for name, _ in s)  # off by default
    m.log(_records(), step=8)  # still alerting: not a new alert
    m.log([r for r in _records() if r["kind"] != "alert"], step=9)
    m.log(_records(), step=10)  # alerting again: a new one
    s = _samples(m.render().decode())
    assert s[("moediag_alerts_total", (("rule", "max_vio"),))] == 2
    assert s[("moediag_windows_total", ())] == 4


def test_balancedness_is_mean_over_max() -> None:
    assert balancedness([1, 1, 1, 1]) == 1.0
    assert balancedness([4, 0, 0, 0]) == 0.25
    assert balancedness([3, 1]) == pytest.approx(2 / 3)
    assert balancedness([0, 0]) is None and balancedness([]) is None


def test_per_expert_series_are_bounded() -> None:
    recs = _records(layers=4, experts=16)
    m = PrometheusMetrics(per_expert="top:2")
    m.log(recs, step=1)
    s = _samples(m.render().decode())
    shares = {k: v for k, v in s.items() if k[0] == "moediag_expert_load_share"}
    assert len(shares) == 4 * 4  # the 2 most and 2 least loaded of each layer
    assert shares[("moediag_expert_load_share", (("expert", "0"), ("layer", "3")))] == pytest.approx(40 / 190)
    m = PrometheusMetrics(per_expert="all", max_series=20)
    m.log(recs, step=1)
    shares = [k for k in _samples(m.render().decode()) if k[0] == "moediag_expert_load_share"]
    assert len(shares) <= 20 and m.truncated
    m = PrometheusMetrics(per_expert="all")
    m.log(recs, step=1)
    assert len([k for k in _samples(m.render().decode()) if k[0] == "moediag_expert_load_share"]) == 64
    for bad in ("some", "top:0", "top:x"):
        with pytest.raises(UsageError):
            parse_per_expert(bad)


def test_server_serves_metrics_and_healthz_and_the_sink_spec(tmp_path: Path) -> None:
    state = {"ok": True}
    m = PrometheusMetrics(health=lambda: (state["ok"], "ok" if state["ok"] else "stalled: no poll for 99 s"))
    server = m.serve("127.0.0.1", 0)
    try:
        m.log(_records(), step=3)
        body = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
        assert ("moediag_layer_balancedness", (("layer", "0"),)) in _samples(body)
        assert urllib.request.urlopen(f"{server.url}/healthz", timeout=5).read() == b"ok\n"
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=5)
        assert err.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/other", timeout=5)
        assert err.value.code == 404
    finally:
        m.close()
    sink = make_sink("prometheus:127.0.0.1:0")  # the training Monitor's spec: the same class, served
    try:
        assert isinstance(sink, PrometheusMetrics) and sink.server is not None
        sink.log(_records(), step=1)
        body = urllib.request.urlopen(f"{sink.server.url}/metrics", timeout=5).read().decode()
        assert "moediag_layer_max_vio" in body
    finally:
        sink.close()


def test_listen_specs() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", "host:99999", ":80"):
        with pytest.raises(UsageError, match="HOST:PORT"):
            parse_listen(bad)


def test_every_metric_is_documented_with_its_type() -> None:
    text = (ROOT / "docs" / "watch.md").read_text()
    names = [(m.name, m.type) for m in METRICS]
    names += [(f"moediag_watch_{n}_total", "counter") for n in WATCH_COUNTERS]
    for name, kind in names:
        assert re.search(rf"^\| `{name}(\{{[^`]*\}})?` \| {kind} \|", text, re.M), (
            f"docs/watch.md: {name} ({kind})"
        )


def test_the_grafana_dashboard_queries_only_metrics_we_export() -> None:
    import json

    dash = json.loads((ROOT / "examples" / "grafana" / "moediag-watch.json").read_text())
    known = {m.name for m in METRICS} | {f"moediag_watch_{n}_total" for n in WATCH_COUNTERS}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"moediag_[a-z_]+", e)}
    assert used and used <= known, used - known
    kinds = {p["type"] for p in dash["panels"]}
    assert {"timeseries", "heatmap", "state-timeline"} <= kinds
    assert any("moediag_layer_balancedness" in e for e in exprs)
    assert any("moediag_expert_load_share" in e for e in exprs) and any(
        "moediag_rule_alert" in e for e in exprs
    )
