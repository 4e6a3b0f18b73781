"""``MoediagCallback`` for Lightning (``lightning.pytorch``; ``pytorch_lightning`` works as well).

>>> from moediag.integrations.lightning import MoediagCallback             # doctest: +SKIP
>>> trainer = L.Trainer(callbacks=[MoediagCallback(every=50, sinks=["tensorboard:runs/moe"])])

The callback takes :class:`moediag.Monitor`'s keyword arguments and monitors the ``LightningModule``'s
routers. Each training batch's forward is observed from ``on_train_batch_start`` to
``on_before_backward`` (so activation-checkpointing recomputation is not counted twice); the step is the
trainer's ``global_step`` (optimizer steps: gradient accumulation is handled). With ``on_alert="stop"`` the
callback sets ``trainer.should_stop``. The ``attention_mask`` of a dict batch, when present, leaves padding
out.
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]

from moediag.monitor import Monitor


def _mask_and_ids(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        return batch.get("input_ids"), batch.get("attention_mask")
    return None, None


class MoediagCallback(Callback):  # type: ignore[misc]
    """A Lightning ``Callback`` that runs a :class:`moediag.Monitor` on the module being trained."""

    def __init__(self, **monitor_kwargs: Any) -> None:
        super().__init__()
        self.kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._batch_step = 0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor = Monitor(pl_module, hook_forward=False, **self.kwargs).start()
        self.monitor.step = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        if mon is None:
            return
        mon.step = trainer.global_step
        self._batch_step = trainer.global_step
        ids, mask = _mask_and_ids(batch)
        mon.begin_forward(ids, mask)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.monitor is not None:
            self.monitor.end_forward()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        mon = self.monitor
        if mon is None:
            return
        mon.end_forward()  # manual optimisation without a backward hook
        if trainer.global_step > self._batch_step:  # the optimizer stepped: the step is complete
            mon.end_step()
        if mon.should_stop:
            trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        mon = self.monitor
        if mon is not None:
            if mon.flight is not None:
                mon.dump_flight(reason="exception")
            mon.close()
