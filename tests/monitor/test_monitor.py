"""moediag.Monitor on a real (tiny) transformers model: figures equal inspect's, steps, alerts, flight."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import moediag  # noqa: E402
from moediag.analysis import analyze_trace  # noqa: E402
from moediag.errors import UsageError  # noqa: E402
from moediag.live.window import LAYER_KEYS  # noqa: E402
from moediag.monitor.flight import step_bytes  # noqa: E402
from tests.conftest import assert_same  # noqa: E402
from tests.monitor.helpers import TinyNet, batch, collapse, tiny_mixtral  # noqa: E402


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _train(model: Any, steps: int, seed: int = 0, opt: Any = None) -> None:
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(steps):
        out = model(**batch(seed + i))
        out.loss.backward()
        opt.step()
        opt.zero_grad()


def test_monitored_figures_equal_inspect_on_a_trace_of_the_same_steps(tmp_path: Path) -> None:
    model = tiny_mixtral(1)
    log = tmp_path / "live.jsonl"
    with (
        moediag.Recorder(model, tmp_path / "trace", outcomes=False) as rec,
        moediag.Monitor(model, every=3, sinks=[f"jsonl:{log}"], rules={"max_vio": "off"}) as mon,
    ):
        _train(model, 6)
    assert rec.steps_recorded == 6 and mon.reports == 2
    want = {r["layer"]: r for r in analyze_trace(tmp_path / "trace").to_dict()["layers"]}
    last = mon.last_report
    assert last is not None and sorted(last.cumulative) == sorted(want) == [0, 1]
    for layer, row in want.items():
        assert_same(last.cumulative[layer], {k: row.get(k) for k in LAYER_KEYS}, f"layer {layer}")
    records = _lines(log)
    layer_records = [r for r in records if r["kind"] == "layer"]
    assert [r["window"] for r in layer_records] == [[0, 2], [0, 2], [3, 5], [3, 5]]
    # the two windows add up to the cumulative load, token for token
    for layer in (0, 1):
        windows = [r for r in layer_records if r["layer"] == layer]
        total = [a + b for a, b in zip(windows[0]["load"], windows[1]["load"], strict=True)]
        assert total == want[layer]["load"]
        assert windows[0]["tokens"] + windows[1]["tokens"] == want[layer]["tokens"]
        assert windows[1]["cumulative"]["load"] == want[layer]["load"]


def test_reports_every_n_steps_and_the_partial_window_at_close(tmp_path: Path) -> None:
    model = tiny_mixtral(2)
    log = tmp_path / "live.jsonl"
    with moediag.Monitor(model, every=4, sinks=f"jsonl:{log}", on_alert="ignore") as mon:
        _train(model, 10)
        with mon.paused():
            model(**batch(99))  # neither counted nor monitored
        model.eval()
        model(**batch(98))  # evaluation forwards are not training steps
        assert mon.step == 10
    summaries = [r for r in _lines(log) if r["kind"] == "summary"]
    assert [(s["step"], s["window"]) for s in summaries] == [(3, [0, 3]), (7, [4, 7]), (9, [8, 9])]


def test_gradient_accumulation_assigns_the_step(tmp_path: Path) -> None:
    model = tiny_mixtral(3)
    log = tmp_path / "live.jsonl"
    with moediag.Monitor(model, every=2, sinks=f"jsonl:{log}", on_alert="ignore") as mon:
        for micro in range(12):  # 3 micro-batches per optimizer step: steps 0..3
            mon.step = micro // 3
            model(**batch(micro)).loss.backward()
    summaries = [r for r in _lines(log) if r["kind"] == "summary"]
    assert [s["window"] for s in summaries] == [[0, 1], [2, 3]]
    tokens = sum(int(batch(m)["attention_mask"].sum()) for m in range(6))
    assert summaries[0]["tokens"] == tokens


def test_collapse_raises_within_w_windows_and_leaves_a_flight_trace(tmp_path: Path) -> None:
    model = tiny_mixtral(4)
    collapse(model, layer=1)
    log = tmp_path / "live.jsonl"
    mon = moediag.Monitor(
        model,
        every=2,
        windows=2,
        sinks=[f"jsonl:{log}"],
        on_alert="raise",
        flight_recorder=3,
        flight_dir=tmp_path / "flight",
    )
    with pytest.raises(moediag.RoutingAlert) as info, mon:
        _train(model, 2 * 2)
    alert = info.value.alerts[0]
    assert alert.layer == 1 and alert.rule == "max_vio" and alert.step == 1
    assert alert.value == pytest.approx(8 / 2 - 1)  # expert 0 takes one of the two choices of every token
    assert any(r["kind"] == "alert" and r["layer"] == 1 for r in _lines(log))
    assert len(mon.flight_traces) == 1
    trace = mon.flight_traces[0]
    doc = analyze_trace(trace).to_dict()
    by_layer = {r["layer"]: r for r in doc["layers"]}
    assert by_layer[1]["max_vio"] == pytest.approx(3.0)
    assert by_layer[1]["load"][0] == by_layer[1]["tokens"]
    # the steps before the alarm: the last two steps, padding left out
    assert by_layer[1]["tokens"] == sum(int(batch(i)["attention_mask"].sum()) for i in range(2))
    from typer.testing import CliRunner

    from moediag.cli import app

    result = CliRunner().invoke(app, ["inspect", str(trace), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["layers"][1]["max_vio"] == pytest.approx(3.0)


def test_on_alert_stop_warn_and_callable() -> None:
    model = tiny_mixtral(5)
    collapse(model, layer=0)
    with moediag.Monitor(model, every=1, on_alert="stop") as mon, pytest.warns(RuntimeWarning) as caught:
        _train(model, 1)
    assert any("layer 0: max_vio" in str(w.message) for w in caught)
    assert mon.should_stop
    got: list[Any] = []
    with moediag.Monitor(model, every=1, on_alert=got.append):
        _train(model, 1)
    assert got and got[0][0].layer == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with moediag.Monitor(model, every=1, on_alert="ignore") as mon:
            _train(model, 1)
    assert mon.alerts


def test_flight_recorder_memory_bound(tmp_path: Path) -> None:
    model = tiny_mixtral(6)
    with moediag.Monitor(model, every=100, flight_recorder=3, flight_logits=True, on_alert="ignore") as mon:
        _train(model, 7)
        flight = mon.flight
        assert flight is not None
        assert [s.step for s in flight.ring] == [4, 5, 6]
        assert flight.nbytes == 3 * step_bytes(4 * 16, 2, 2, 8, logits=True)
        path = mon.dump_flight(tmp_path / "now")
    assert path is not None
    doc = analyze_trace(path).to_dict()
    assert doc["layers"][0]["tokens"] == sum(int(batch(i)["attention_mask"].sum()) for i in (4, 5, 6))
    small = tiny_mixtral(6)
    cap = step_bytes(64, 2, 2, 8, logits=False) * 2  # room for two steps
    with moediag.Monitor(
        small, every=100, flight_recorder=10, flight_max_bytes=cap, on_alert="ignore"
    ) as mon:
        _train(small, 5)
        assert mon.flight is not None and len(mon.flight.ring) == 2 and mon.flight.nbytes <= cap


def test_custom_megatron_style_modules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet().train()
    ids = torch.randint(0, 50, (3, 10))
    found = moediag.Monitor(net, every=1, top_k=2, score_function="sigmoid", on_alert="ignore")
    with found as mon:
        net(ids)
    assert [s.name for s in mon.sites] == ["blocks.0.gate", "blocks.1.gate"]
    report = mon.last_report
    assert report is not None and report.layers[0]["tokens"] == 30
    with torch.no_grad():
        x = net.emb(ids).reshape(-1, 16)
        ref = torch.bincount(torch.sigmoid(net.blocks[0].gate(x)).topk(2).indices.reshape(-1), minlength=4)
    assert report.layers[0]["load"] == ref.tolist()
    explicit = moediag.Monitor(
        net, every=1, routers={5: net.blocks[1].gate}, top_k=2, score_function="sigmoid", on_alert="ignore"
    )
    with explicit as mon:
        net(ids)
    assert mon.last_report is not None and list(mon.last_report.layers) == [5]


def test_bad_arguments() -> None:
    model = tiny_mixtral(7)
    with pytest.raises(UsageError, match="every=0"):
        moediag.Monitor(model, every=0)
    with pytest.raises(UsageError, match="on_alert='boom'"):
        moediag.Monitor(model, on_alert="boom")
    with pytest.raises(UsageError, match="unknown check key 'max_vioo'"):
        moediag.Monitor(model, rules={"max_vioo": 1.0})
    with pytest.raises(moediag.UnsupportedLayoutError, match="no MoE router"):
        moediag.Monitor(torch.nn.Linear(3, 3)).start()


def test_rules_from_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "moediag.toml"
    cfg.write_text("[check]\nmax_vio = 0.01\n")
    model = tiny_mixtral(8)
    with moediag.Monitor(model, every=1, rules=cfg, on_alert="ignore") as mon:
        _train(model, 1)
    assert {a.rule for a in mon.alerts} >= {"max_vio"}
    assert all(a.limit == 0.01 for a in mon.alerts if a.rule == "max_vio")
