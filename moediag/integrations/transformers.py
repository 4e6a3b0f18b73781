"""``MoediagCallback`` for transformers' ``Trainer`` (and so TRL's trainers).

>>> from moediag.integrations.transformers import MoediagCallback          # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=ds,
...                   callbacks=[MoediagCallback(every=50, sinks=["tensorboard:runs/moe"])])

The callback takes :class:`moediag.Monitor`'s keyword arguments. It starts the monitor when training
begins, uses the trainer's global step (``state.global_step``, the optimizer step, so gradient
accumulation is handled), reports every ``every`` optimizer steps, and with ``on_alert="stop"`` sets
``control.should_training_stop`` when an alert fires. Evaluation forwards (the model in eval mode) are
not monitored.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from moediag.monitor import Monitor


class MoediagCallback(TrainerCallback):  # type: ignore[misc]
    """A ``TrainerCallback`` that runs a :class:`moediag.Monitor` on the trainer's model."""

    def __init__(self, **monitor_kwargs: Any) -> None:
        self.kwargs = monitor_kwargs
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> Any:
        if model is None:
            raise ValueError("MoediagCallback: the Trainer passed no model")
        self.monitor = Monitor(model, **self.kwargs).start()
        self.monitor.step = state.global_step
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.monitor is not None:
            self.monitor.step = state.global_step
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        mon = self.monitor
        if mon is not None:
            mon.end_step()
            if mon.should_stop:
                control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.monitor is not None:
            self.monitor.close()
        return control
