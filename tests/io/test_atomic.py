"""Atomic writes leave nothing on failure and give outputs the mode the umask asks for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from moediag.io.atomic import write_atomic, write_atomic_with
from moediag.trace import TraceWriter, build_metadata, write_trace


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_umask_modes(tmp_path: Path, umask_022: None) -> None:
    assert mode(write_atomic(tmp_path / "a.txt", "hi")) == 0o644
    meta = build_metadata(num_experts=4, top_k=1, score_function="softmax")
    assert (
        mode(write_trace(tmp_path / "t.safetensors", {"layers.0.router_logits": torch.randn(3, 4)}, meta))
        == 0o644
    )
    with TraceWriter(tmp_path / "shards", meta) as w:
        w.add({"layers.0.router_logits": torch.randn(3, 4)})
    assert mode(tmp_path / "shards") == 0o755


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    def boom(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic_with(tmp_path / "out.html", boom)
    assert list(tmp_path.iterdir()) == []
