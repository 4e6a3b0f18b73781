"""A real transformers ``Trainer`` run with ``MoediagCallback``: TensorBoard events, alerts, stopping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import Trainer, TrainingArguments  # noqa: E402

from moediag.integrations.transformers import MoediagCallback  # noqa: E402
from tests.monitor.helpers import batch, collapse, tiny_mixtral  # noqa: E402


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.rows = []
        for i in range(n):
            b = batch(i, b=1, s=16, pad=False)
            self.rows.append({k: v[0] for k, v in b.items()})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def _args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=kw.pop("max_steps", 6),
        learning_rate=1e-3,
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kw,
    )


def test_trainer_run_writes_tensorboard_and_jsonl(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_mixtral(11)
    log = tmp_path / "live.jsonl"
    cb = MoediagCallback(every=2, sinks=[f"jsonl:{log}", f"tensorboard:{tmp_path / 'tb'}"], on_alert="ignore")
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=6, gradient_accumulation_steps=2),
        train_dataset=_Data(48),
        callbacks=[cb],
    )
    trainer.train()
    assert trainer.state.global_step == 6
    summaries = [json.loads(x) for x in log.read_text().splitlines() if '"summary"' in x]
    assert [s["window"] for s in summaries] == [[0, 1], [2, 3], [4, 5]]
    # 2 optimizer steps x 2 micro-batches x 4 sequences x 16 tokens per window
    assert [s["tokens"] for s in summaries] == [256, 256, 256]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("moediag/layer_00/max_vio")] == [1, 3, 5]
    assert "moediag/layer_01/load" in acc.Tags()["histograms"]


def test_trainer_stops_on_a_collapsed_router(tmp_path: Path) -> None:
    model = tiny_mixtral(12)
    collapse(model, layer=0)
    cb = MoediagCallback(every=2, windows=2, on_alert="stop", flight_recorder=2, flight_dir=tmp_path / "fl")
    trainer = Trainer(
        model=model, args=_args(tmp_path, max_steps=20), train_dataset=_Data(100), callbacks=[cb]
    )
    with pytest.warns(RuntimeWarning, match="max_vio"):
        trainer.train()
    assert trainer.state.global_step == 2  # stopped at the first report
    assert cb.monitor is not None and cb.monitor.flight_traces
