"""Where live records go: a small :class:`Sink` protocol and a registry of sinks by spec string.

A sink receives, at every report, the list of records of that report (the JSONL contract of
docs/monitor.md: ``"layer"`` records, one ``"summary"``, and ``"alert"`` records) and the step::

    class MySink:
        def log(self, records: Sequence[Mapping[str, Any]], step: int) -> None: ...
        def close(self) -> None: ...

Built-in specs (each tracker is an optional extra, imported only when its sink is made):

==========================  ===========================================================================
``"jsonl:PATH"``            one JSON object a line, every record as is (the contract)
``"tensorboard:DIR"``       event files: per-layer scalars, per-expert loads as histograms, alert text
``"wandb"`` / ``wandb:P``   the active W&B run, else a new one in project ``P`` (default ``moediag``)
``"mlflow"`` / ``mlflow:E`` the active MLflow run, else a new one in experiment ``E``
``"logging"`` / ``logging:NAME``  Python ``logging`` (logger ``moediag.monitor`` by default)
``"prometheus:HOST:PORT"``  ``/metrics`` and ``/healthz`` served from this process (docs/watch.md)
==========================  ===========================================================================

Trackers get a bounded number of series (:func:`scalars`): per layer the figures of
:data:`LAYER_SCALARS`, the summary's figures, and the count of alerts; per-expert loads go to histograms
(TensorBoard, W&B), never one scalar per expert. ``register_sink(scheme, factory)`` adds a scheme.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from moediag.errors import UsageError

Record = Mapping[str, Any]

#: per-layer scalar series (``moediag/layer_03/max_vio``); dead/cold are counts
LAYER_SCALARS: tuple[str, ...] = (
    "max_vio",
    "cv",
    "entropy_norm",
    "aux_loss",
    "z_loss",
    "router_entropy_norm",
    "margin_mean",
    "dead_experts",
    "cold_experts",
    "judged_dead",
)
#: summary scalar series (``moediag/summary/max_vio``)
SUMMARY_SCALARS: tuple[str, ...] = (
    "tokens",
    "max_vio",
    "max_vio_mean",
    "cv",
    "entropy_norm",
    "aux_loss_mean",
    "z_loss_mean",
    "dead_experts",
    "cold_experts",
    "judged_dead",
)
PREFIX = "moediag"


@runtime_checkable
class Sink(Protocol):
    """What a sink implements (Lightning's ``Logger`` in miniature)."""

    def log(self, records: Sequence[Record], step: int) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (list, tuple)):
        return float(len(value))
    return None


def layer_tag(layer: Any) -> str:
    return f"layer_{int(layer):02d}" if isinstance(layer, int) and layer >= 0 else f"layer_{layer}"


def scalars(records: Sequence[Record]) -> dict[str, float]:
    """The bounded scalar series of one report: ``moediag/layer_LL/KEY``, ``moediag/summary/KEY`` and
    ``moediag/alerts`` (the number of alerts in this report)."""
    out: dict[str, float] = {}
    alerts = 0
    for rec in records:
        kind = rec.get("kind")
        if kind == "layer":
            tag = layer_tag(rec.get("layer"))
            for key in LAYER_SCALARS:
                value = _number(rec.get(key))
                if value is not None:
                    out[f"{PREFIX}/{tag}/{key}"] = value
        elif kind == "summary":
            for key in SUMMARY_SCALARS:
                value = _number(rec.get(key))
                if value is not None:
                    out[f"{PREFIX}/summary/{key}"] = value
        elif kind == "alert":
            alerts += 1
    out[f"{PREFIX}/alerts"] = float(alerts)
    return out


def histograms(records: Sequence[Record]) -> dict[str, list[int]]:
    """Per-layer expert loads of one report: ``moediag/layer_LL/load`` -> counts per expert."""
    return {
        f"{PREFIX}/{layer_tag(rec.get('layer'))}/load": [int(x) for x in rec["load"]]
        for rec in records
        if rec.get("kind") == "layer" and rec.get("load") is not None
    }


def alert_messages(records: Sequence[Record]) -> list[str]:
    return [str(r.get("message")) for r in records if r.get("kind") == "alert"]


# --------------------------------------------------------------------------------------------------
# Built-in sinks
# --------------------------------------------------------------------------------------------------


class JsonlSink:
    """``jsonl:PATH``: every record as one JSON line, flushed at every report (crash-safe)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def log(self, records: Sequence[Record], step: int) -> None:
        for rec in records:
            self._fh.write(json.dumps(rec, default=_json_default) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class LoggingSink:
    """``logging[:NAME]``: one INFO line per report (the summary), one WARNING line per alert."""

    def __init__(self, name: str = "moediag.monitor") -> None:
        self.logger = logging.getLogger(name or "moediag.monitor")

    def log(self, records: Sequence[Record], step: int) -> None:
        for rec in records:
            if rec.get("kind") == "summary":
                vio = rec.get("max_vio")
                self.logger.info(
                    "moediag step %s: %s tokens, worst MaxVio %s (layer %s), %s dead, %s cold experts",
                    step,
                    rec.get("tokens"),
                    "n/a" if vio is None else f"{vio:.3f}",
                    rec.get("max_vio_layer"),
                    rec.get("dead_experts"),
                    rec.get("cold_experts"),
                )
            elif rec.get("kind") == "alert":
                self.logger.warning("moediag alert: %s", rec.get("message"))

    def close(self) -> None:
        return None


class TensorBoardSink:
    """``tensorboard:DIR``: scalars, load histograms (one bucket per expert) and alerts as text."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UsageError(
                "the tensorboard sink needs tensorboard: pip install 'moediag[tensorboard]'"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log(self, records: Sequence[Record], step: int) -> None:
        import numpy as np

        for tag, value in scalars(records).items():
            self.writer.add_scalar(tag, value, step)
        for tag, counts in histograms(records).items():
            c = np.asarray(counts, dtype=np.float64)
            e = len(counts)
            if c.sum() == 0:
                continue
            ids = np.arange(e, dtype=np.float64)
            total = float(c.sum())
            self.writer.add_histogram_raw(
                tag,
                min=0.0,
                max=float(e - 1),
                num=total,
                sum=float((ids * c).sum()),
                sum_squares=float((ids * ids * c).sum()),
                bucket_limits=(ids + 0.5).tolist(),
                bucket_counts=c.tolist(),
                global_step=step,
            )
        messages = alert_messages(records)
        if messages:
            self.writer.add_text(f"{PREFIX}/alert_messages", "\n\n".join(messages), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """``wandb[:PROJECT]``: logs into ``wandb.run`` when a run is active (the Trainer's), else starts one."""

    def __init__(self, project: str | None = None) -> None:
        try:
            import wandb
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UsageError("the wandb sink needs wandb: pip install 'moediag[wandb]'") from exc
        self.wandb = wandb
        self._own = wandb.run is None
        self.run = wandb.run if wandb.run is not None else wandb.init(project=project or "moediag")

    def log(self, records: Sequence[Record], step: int) -> None:
        import numpy as np

        data: dict[str, Any] = dict(scalars(records))
        for tag, counts in histograms(records).items():
            e = len(counts)
            edges = np.arange(e + 1, dtype=np.float64) - 0.5
            data[tag] = self.wandb.Histogram(np_histogram=(np.asarray(counts, dtype=np.float64), edges))
        messages = alert_messages(records)
        if messages:
            data[f"{PREFIX}/alert_messages"] = self.wandb.Html("<br>".join(messages))
        if self._own:
            self.run.log(data, step=step)
        else:  # the run's owner (the Trainer's WandbCallback) drives W&B's step: ours is a metric
            data[f"{PREFIX}/step"] = step
            self.run.log(data)

    def close(self) -> None:
        if self._own:
            self.run.finish()


class MlflowSink:
    """``mlflow[:EXPERIMENT]``: scalars into the active MLflow run, else a new one; loads and alerts as a
    JSON artifact per report is left out on purpose (bounded series): the loads are in the JSONL sink."""

    def __init__(self, experiment: str | None = None) -> None:
        try:
            import mlflow
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UsageError("the mlflow sink needs mlflow: pip install 'moediag[mlflow]'") from exc
        self.mlflow = mlflow
        active = mlflow.active_run()
        self._own = active is None
        if active is None:
            if experiment:
                mlflow.set_experiment(experiment)
            active = mlflow.start_run()
        self.run = active

    def log(self, records: Sequence[Record], step: int) -> None:
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        clean = {k.replace("/", "."): v for k, v in scalars(records).items()}
        metrics = [Metric(key, value, now, step) for key, value in clean.items()]
        MlflowClient().log_batch(self.run.info.run_id, metrics=metrics)

    def close(self) -> None:
        if self._own:
            self.mlflow.end_run()


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

SinkFactory = Callable[[str | None], Sink]


def _needs_arg(name: str, factory: Callable[[str], Sink]) -> SinkFactory:
    def make(arg: str | None) -> Sink:
        if not arg:
            raise UsageError(f"sink {name!r} needs a path: {name}:PATH")
        return factory(arg)

    return make


def _prometheus(arg: str | None) -> Sink:
    from moediag.live.prometheus import prometheus_sink

    return prometheus_sink(arg)


SINKS: dict[str, SinkFactory] = {
    "jsonl": _needs_arg("jsonl", JsonlSink),
    "tensorboard": _needs_arg("tensorboard", TensorBoardSink),
    "wandb": lambda arg: WandbSink(arg),
    "mlflow": lambda arg: MlflowSink(arg),
    "logging": lambda arg: LoggingSink(arg or "moediag.monitor"),
    "prometheus": _prometheus,
}


def register_sink(scheme: str, factory: SinkFactory) -> None:
    """Make ``"scheme:ARG"`` specs build ``factory(ARG)`` (``factory(None)`` for a bare ``"scheme"``)."""
    SINKS[scheme] = factory


def make_sink(spec: str | Sink) -> Sink:
    """A sink from a spec string (``"jsonl:run.jsonl"``), or ``spec`` itself when it is already a sink."""
    if not isinstance(spec, str):
        if not isinstance(spec, Sink):
            raise UsageError(f"sink {spec!r}: expected a spec string or an object with log() and close()")
        return spec
    scheme, sep, arg = spec.partition(":")
    factory = SINKS.get(scheme)
    if factory is None:
        raise UsageError(f"unknown sink {spec!r}: expected one of {', '.join(sorted(SINKS))} (as 'name:arg')")
    return factory(arg if sep else None)


def make_sinks(specs: Sequence[str | Sink] | str | Sink | None) -> list[Sink]:
    if specs is None:
        return []
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        specs = [specs]
    return [make_sink(s) for s in specs]
