"""The training Monitor's "prometheus:HOST:PORT" sink: moediag watch's metrics, from a training loop."""

from __future__ import annotations

import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("transformers")

import moediag  # noqa: E402
from moediag.live.prometheus import PrometheusMetrics, balancedness  # noqa: E402
from tests.monitor.helpers import batch, tiny_mixtral  # noqa: E402


def test_a_training_loop_serves_per_layer_balancedness() -> None:
    model = tiny_mixtral(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with moediag.Monitor(model, every=2, sinks=["prometheus:127.0.0.1:0"], on_alert="ignore") as mon:
        sink = next(s for s in mon.sinks if isinstance(s, PrometheusMetrics))
        assert sink.server is not None
        for i in range(4):
            model(**batch(i)).loss.backward()
            opt.step()
            opt.zero_grad()
        body = urllib.request.urlopen(f"{sink.server.url}/metrics", timeout=5).read().decode()
        last = mon.last_report
        assert last is not None
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        got = {int(s.labels["layer"]): s.value for s in fams["moediag_layer_balancedness"].samples}
        assert got == {layer: balancedness(row["load"]) for layer, row in last.layers.items()}
        assert fams["moediag_windows"].samples[0].value == mon.reports
