"""Monitor under torch.distributed (gloo on the CPU): figures equal one process over the union of tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import moediag
from tests.conftest import assert_same
from tests.monitor.helpers import distributed_batch, distributed_model, distributed_worker

STEPS, EVERY = 4, 2


def _layers(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "layer"]


def _one_process(world: int, out: Path) -> None:
    model = distributed_model()
    mon = moediag.Monitor(
        model, every=EVERY, sinks=[f"jsonl:{out}"], top_k=2, score_function="sigmoid", on_alert="ignore"
    )
    with mon, torch.no_grad():
        for step in range(STEPS):
            mon.step = step
            for rank in range(world):  # every rank's batch of this step, in one process
                model(distributed_batch(step, rank))


@pytest.mark.slow  # each rank is a fresh interpreter (spawn) importing torch
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_reduce_to_the_union(tmp_path: Path, world: int) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "ranks.jsonl"
    init = (tmp_path / "rendezvous").as_uri()
    # spawn, not fork: forked gloo children can hang on torch's inherited thread pools
    mp.spawn(distributed_worker, args=(world, init, str(out), STEPS, EVERY), nprocs=world, join=True)
    assert not list(tmp_path.glob("ranks.jsonl.rank*"))  # only rank 0 writes the sinks
    ref = tmp_path / "one.jsonl"
    _one_process(world, ref)
    got, want = _layers(out), _layers(ref)
    assert len(got) == len(want) == 3 * (STEPS // EVERY)
    for a, b in zip(got, want, strict=True):
        assert a["load"] == b["load"] and a["tokens"] == b["tokens"]  # counts bit-exact
        assert a["dead_experts"] == b["dead_experts"] and a["cold_experts"] == b["cold_experts"]
        # float figures: the ranks' router logits come from float32 matmuls run with another thread count
        # than this process's, which may round a logit one ulp apart (seen: 2e-9 relative in z-loss)
        assert_same(a, b, f"layer {a['layer']} step {a['step']}", rel=1e-6)
