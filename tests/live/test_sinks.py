"""Sinks with the real trackers: JSONL, logging, TensorBoard event files, MLflow file store, W&B offline."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from moediag.errors import UsageError
from moediag.live import LiveStats, TemporalJudge, evaluate, make_sink, make_sinks, register_sink
from moediag.live.sinks import LAYER_SCALARS, SUMMARY_SCALARS, histograms, scalars


def _records(step: int = 10, layers: int = 3, experts: int = 16) -> list[dict[str, Any]]:
    live, judge = LiveStats(), TemporalJudge(windows=1)
    g = torch.Generator().manual_seed(step)
    for layer in range(layers):
        counts = torch.randint(50, 100, (1, experts), generator=g)
        counts[0, 0] = 1000 if layer == 1 else counts[0, 0]
        live.update_counts(layer, experts, counts, step=step)
    report = live.close_window(step=step)
    judge.judge(report)
    return report.records() + [a.record() for a in evaluate(report)]


def test_series_are_bounded_per_layer_not_per_expert() -> None:
    records = _records(layers=4, experts=256)
    series = scalars(records)
    assert len(series) <= 4 * len(LAYER_SCALARS) + len(SUMMARY_SCALARS) + 1
    assert series["moediag/layer_01/max_vio"] == pytest.approx(records[1]["max_vio"])
    assert series["moediag/alerts"] >= 1
    assert histograms(records)["moediag/layer_01/load"] == records[1]["load"]


def test_jsonl_sink_writes_every_record(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "live.jsonl"
    sink = make_sink(f"jsonl:{path}")
    first, second = _records(10), _records(20)
    sink.log(first, 10)
    sink.log(second, 20)
    sink.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == json.loads(json.dumps(first + second))
    assert {x["kind"] for x in lines} == {"layer", "summary", "alert"}
    alert = next(x for x in lines if x["kind"] == "alert")
    assert set(alert) == {"kind", "step", "rule", "layer", "value", "limit", "message"}


def test_logging_sink(caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink("logging")
    with caplog.at_level(logging.INFO, logger="moediag.monitor"):
        sink.log(_records(), 10)
    assert any("worst MaxVio" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert any("moediag alert" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_registry_and_custom_sinks() -> None:
    with pytest.raises(UsageError, match="unknown sink 'nope:x'"):
        make_sink("nope:x")
    with pytest.raises(UsageError, match="needs a path"):
        make_sink("jsonl")

    class Mine:
        def __init__(self, arg: str | None) -> None:
            self.arg, self.got = arg, []

        def log(self, records: Any, step: int) -> None:
            self.got.append(step)

        def close(self) -> None:
            pass

    register_sink("mine", Mine)
    sinks = make_sinks(["mine:abc", Mine(None)])
    assert isinstance(sinks[0], Mine) and sinks[0].arg == "abc"
    with pytest.raises(UsageError, match="log\\(\\) and close\\(\\)"):
        make_sink(42)  # type: ignore[arg-type]


def test_tensorboard_event_files_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = make_sink(f"tensorboard:{tmp_path / 'tb'}")
    first, second = _records(10), _records(20)
    sink.log(first, 10)
    sink.log(second, 20)
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    vio = acc.Scalars("moediag/layer_01/max_vio")
    assert [e.step for e in vio] == [10, 20]
    assert vio[0].value == pytest.approx(first[1]["max_vio"], rel=1e-6)
    assert "moediag/summary/max_vio" in tags["scalars"]
    assert len(tags["scalars"]) == len(scalars(first))
    hist = acc.Histograms("moediag/layer_01/load")
    assert [h.step for h in hist] == [10, 20]
    assert list(hist[0].histogram_value.bucket) == pytest.approx([float(x) for x in first[1]["load"]])
    assert hist[0].histogram_value.num == sum(first[1]["load"])
    assert "moediag/alert_messages/text_summary" in tags["tensors"]  # add_text: a tensor summary


def test_mlflow_local_file_store_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this
    mlflow.set_tracking_uri(uri)
    sink = make_sink("mlflow:moediag-test")
    run_id = sink.run.info.run_id  # type: ignore[attr-defined]
    first, second = _records(10), _records(20)
    sink.log(first, 10)
    sink.log(second, 20)
    sink.close()
    assert mlflow.active_run() is None  # it ended the run it started
    history = MlflowClient(uri).get_metric_history(run_id, "moediag.layer_01.max_vio")
    assert [m.step for m in history] == [10, 20]
    assert history[0].value == pytest.approx(first[1]["max_vio"])


def test_wandb_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = make_sink("wandb:moediag-test")
    run = sink.run  # type: ignore[attr-defined]
    logged = {10: _records(10), 20: _records(20)}
    for step, records in logged.items():
        sink.log(records, step)
    summary = dict(run.summary)  # W&B commits a history row when the next step starts
    sink.close()
    assert wandb.run is None
    step = summary["_step"]
    assert step in logged
    assert summary["moediag/layer_01/max_vio"] == pytest.approx(logged[step][1]["max_vio"])
    assert summary["moediag/layer_01/load"]["_type"] == "histogram"
    files = list(tmp_path.rglob("*.wandb"))
    assert files and files[0].stat().st_size > 0, "no offline run file written"
