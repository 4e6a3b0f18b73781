"""Each format: what watch counts equals what import + inspect count on the same dumps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.conftest import random_tensors, trace_metadata, write_raw
from tests.importers.fixtures import (
    MegatronTracerWriter,
    trtllm_counts,
    vllm_b64_npy,
    write_megatron_tpe,
    write_sglang_csv,
    write_sglang_stat,
    write_trtllm,
)
from tests.watch.helpers import cumulative_loads, import_loads, sglang_per_token_dump, watch_once


def test_sglang_per_token_equals_import_and_tensor_parallel_copies_count_once(tmp_path: Path) -> None:
    d = tmp_path / "dumps"
    _, loads = sglang_per_token_dump(d, 1.0, passes=3, seed=1, rank=0)
    sglang_per_token_dump(d, 1.0, passes=3, seed=1, rank=1)  # TP: rank 1 recorded the same batches
    got = cumulative_loads(watch_once(d, "sglang"))
    assert got == {layer: v.tolist() for layer, v in loads.items()}
    assert got == import_loads("sglang", d, tmp_path)


def test_sglang_per_pass_and_stat_counts(tmp_path: Path) -> None:
    d = tmp_path / "pass"
    path, _ = sglang_per_token_dump(d, 2.0, passes=2, seed=3)
    obj = torch.load(path, weights_only=True)
    for rec in obj["records"]:  # per_pass: the same records without the per-token fields
        del rec["topk_ids_of_layer"]
    torch.save(obj, path)
    assert cumulative_loads(watch_once(d, "sglang")) == import_loads("sglang", d, tmp_path)

    s = tmp_path / "stat"
    lc = torch.zeros(6, 3, 5, dtype=torch.int64)
    lc[:4, 1] = torch.randint(0, 40, (4, 5))
    lc[:4, 2] = torch.randint(1, 9, (4, 5))
    write_sglang_stat(s, lc, 1.0)
    w = watch_once(s, "sglang")
    assert cumulative_loads(w) == {1: lc[:, 1].sum(0).tolist(), 2: lc[:, 2].sum(0).tolist()}
    assert w.step == 4  # one step per used buffer slot


def test_sglang_csv_needs_num_experts_like_import(tmp_path: Path) -> None:
    write_sglang_csv(tmp_path, 0, {3: {0: 5, 2: 7}})
    w = watch_once(tmp_path, "sglang", num_experts=4)
    assert cumulative_loads(w) == {3: [5, 0, 7, 0]}


def test_vllm_whole_files_and_appended_responses(tmp_path: Path) -> None:
    e, k, nl = 8, 2, 3
    rng = np.random.default_rng(0)

    def routed(n: int) -> np.ndarray:
        return np.stack([[rng.permutation(e)[:k] for _ in range(nl)] for _ in range(n)]).astype(np.int16)

    np.save(tmp_path / "req0.npy", routed(5))
    with open(tmp_path / "responses.jsonl", "w") as f:
        for i in range(3):
            arr = routed(4 + i)
            f.write(json.dumps({"choices": [{"routed_experts": vllm_b64_npy(arr)}]}) + "\n")
    got = cumulative_loads(watch_once(tmp_path, "vllm", num_experts=e, layer_ids=[1, 2, 3]))
    want = import_loads("vllm", tmp_path, tmp_path / "..", num_experts=e, layer_ids=[1, 2, 3])
    assert got == want and sorted(got) == [1, 2, 3]


def test_trtllm_ranks_summed(tmp_path: Path) -> None:
    e, k = 8, 2
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "stats"
    for rank in range(2):
        recs = {
            (it, layer): trtllm_counts(torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(5)]), e)
            for it in range(100, 103)
            for layer in (3, 4)
        }
        write_trtllm(d, rank, recs, {"num_experts": e, "num_experts_per_token": k})
    w = watch_once(d, "trtllm")
    assert cumulative_loads(w) == import_loads("trtllm", d, tmp_path)
    assert w.counters["tokens"] > 0


def test_megatron_router_trace_and_tokens_per_expert(tmp_path: Path) -> None:
    e = 6
    d = tmp_path / "trace"
    writer = MegatronTracerWriter(d, 0, logits=False, hidden=False)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        for layer in (1, 2):
            writer.record(
                step, layer, torch.stack([torch.randperm(e, generator=g)[:2] for _ in range(4)]), None, None
            )
        writer.record(step, 0, torch.zeros(1, 2, dtype=torch.int64), None, None, block="mtp", mtp_idx=0)
    got = cumulative_loads(watch_once(d, "megatron", num_experts=e))
    assert got == import_loads("megatron", d, tmp_path, num_experts=e)

    t = tmp_path / "tpe"
    recs = [
        {"iter": i, "block": "decoder", "layer": layer, "tpe": [[i + layer, 1, 2, 3]]}
        for i in range(3)
        for layer in (1, 3)
    ]
    write_megatron_tpe(t, 0, recs)
    w = watch_once(t, "megatron")
    assert cumulative_loads(w) == import_loads("megatron", t, tmp_path)


def test_trace_files_equal_inspect(tmp_path: Path) -> None:
    from moediag.analysis import analyze_trace

    d = tmp_path / "traces"
    d.mkdir()
    tensors = random_tensors(0, tokens=200, num_experts=8, top_k=2, layers=(0, 2), skew=1.5, mask=True)
    write_raw(d / "a.safetensors", tensors, trace_metadata(8, 2))
    w = watch_once(d, "trace")
    rep, _ = w.report()
    want = {row["layer"]: row for row in analyze_trace(d / "a.safetensors").to_dict()["layers"]}
    for layer, row in rep.cumulative.items():
        assert row["load"] == want[layer]["load"] and row["tokens"] == want[layer]["tokens"]
        assert row["max_vio"] == want[layer]["max_vio"]


def test_trace_folders_written_by_the_trace_writer_are_read_once_complete(tmp_path: Path) -> None:
    from moediag.analysis import analyze_trace
    from moediag.trace import build_metadata
    from moediag.trace.writer import TraceWriter

    d = tmp_path / "watched"
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    writer = TraceWriter(
        d / "run", build_metadata(num_experts=8, top_k=2, score_function="softmax"), shard_tokens=50
    )
    for _ in range(4):
        writer.add(
            {"layers.0.topk_ids": torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(40)])}
        )
        assert (
            cumulative_loads(watch_once(d, "trace")) == {}
        )  # shards in a hidden temporary folder until closed
    writer.close()
    want = {row["layer"]: row["load"] for row in analyze_trace(d / "run").to_dict()["layers"]}
    assert cumulative_loads(watch_once(d, "trace")) == want
