"""A real Lightning run with ``MoediagCallback``: JSONL, the global step, stopping on an alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformers")

from moediag.integrations.lightning import MoediagCallback  # noqa: E402
from tests.monitor.helpers import batch, collapse, tiny_mixtral  # noqa: E402


class _Module(L.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.model = tiny_mixtral(seed)

    def training_step(self, b: dict[str, torch.Tensor], idx: int) -> torch.Tensor:
        return self.model(**b).loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int) -> Any:
    rows = [batch(i, b=2, s=16) for i in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=None)


def _trainer(tmp_path: Path, cb: MoediagCallback, **kw: Any) -> Any:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=kw.pop("max_steps", 6),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
        **kw,
    )


def test_lightning_run_reports_on_optimizer_steps(tmp_path: Path) -> None:
    log = tmp_path / "live.jsonl"
    cb = MoediagCallback(every=2, sinks=[f"jsonl:{log}"], on_alert="ignore")
    trainer = _trainer(tmp_path, cb, max_steps=4, accumulate_grad_batches=2)
    trainer.fit(_Module(21), _loader(8))
    assert trainer.global_step == 4
    summaries = [json.loads(x) for x in log.read_text().splitlines() if '"summary"' in x]
    assert [s["window"] for s in summaries] == [[0, 1], [2, 3]]
    tokens = [sum(int(batch(i, b=2, s=16)["attention_mask"].sum()) for i in range(a, a + 4)) for a in (0, 4)]
    assert [s["tokens"] for s in summaries] == tokens


def test_lightning_stops_on_a_collapsed_router(tmp_path: Path) -> None:
    module = _Module(22)
    collapse(module.model, layer=1)
    cb = MoediagCallback(every=2, on_alert="stop")
    trainer = _trainer(tmp_path, cb, max_steps=50)
    with pytest.warns(RuntimeWarning, match="max_vio"):
        trainer.fit(module, _loader(50))
    assert trainer.global_step == 2
