"""The watcher: skips bad files, resumes without reading twice, bounded memory, windows and alerts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moediag.checks import CheckConfig
from moediag.errors import InvalidInputError, MissingMetadataError, UsageError
from moediag.watch import DecodeOptions, Watcher, WatchOptions
from tests.importers.fixtures import write_sglang_csv, write_sglang_stat
from tests.watch.helpers import cumulative_loads, sglang_per_token_dump, watch_once


def _dumps(folder: Path, n: int) -> dict[int, list[int]]:
    total: dict[int, torch.Tensor] = {}
    for i in range(n):
        _, loads = sglang_per_token_dump(folder, float(i + 1), passes=2, seed=i)
        for layer, v in loads.items():
            total[layer] = total.get(layer, torch.zeros_like(v)) + v
    return {layer: v.tolist() for layer, v in total.items()}


def test_malformed_files_are_skipped_logged_once_and_counted(tmp_path: Path) -> None:
    d = tmp_path / "d"
    want = _dumps(d, 2)
    (d / "expert_distribution_garbage.pt").write_bytes(b"not a pickle")
    torch.save({"something": 1}, d / "expert_distribution_other.pt")
    logs: list[str] = []
    opts = WatchOptions("sglang", settle=0, check=None, window_seconds=None)
    w = Watcher([d], opts, log=logs.append)
    w.poll()
    w.poll()
    assert cumulative_loads(w) == want
    assert w.counters["bad_files"] == 2 and w.counters["files"] == 2
    assert len(logs) == 2 and all(line.startswith(f"skipped {d}/expert_distribution_") for line in logs)
    assert "not an SGLang expert distribution dump" in " ".join(logs)


def test_a_bad_jsonl_line_is_skipped_and_the_rest_read(tmp_path: Path) -> None:
    d = tmp_path / "trace"
    d.mkdir()
    good = '{"step": 0, "layer": 1, "rank": 0, "num_tokens": 1, "topk": 2, "top_indices": [[0, 1]]}'
    (d / "router_trace_rank0.jsonl").write_text(
        good + "\n{not json\n" + good.replace('"step": 0', '"step": 1') + "\n"
    )
    logs: list[str] = []
    w = Watcher(
        [d], WatchOptions("megatron", DecodeOptions(num_experts=4), settle=0, check=None), log=logs.append
    )
    w.poll()
    assert cumulative_loads(w) == {1: [2, 2, 0, 0]}
    assert w.counters["bad_lines"] == 1 and logs == [
        f"skipped {d}/router_trace_rank0.jsonl line 2: not valid JSON: "
        "Expecting property name enclosed in double quotes at line 1 column 2"
    ]


def test_a_missing_flag_stops_the_watcher(tmp_path: Path) -> None:
    write_sglang_csv(tmp_path, 0, {1: {0: 3}})
    with pytest.raises(MissingMetadataError, match="--num-experts"):
        watch_once(tmp_path, "sglang")
    with pytest.raises(UsageError, match="--num-experts"):
        watch_once(tmp_path, "vllm")


def test_restart_resumes_from_the_state_without_reading_twice(tmp_path: Path) -> None:
    d = tmp_path / "d"
    state = tmp_path / "state" / "watch.json"
    first = _dumps(d, 2)
    w1 = watch_once(d, "sglang", state=state)
    w1.save()
    assert cumulative_loads(w1) == first
    more = tmp_path / "more"
    _, extra = sglang_per_token_dump(more, 9.0, passes=1, seed=9)
    for p in more.iterdir():
        shutil.move(str(p), d / p.name)
    w2 = watch_once(d, "sglang", state=state)
    got = cumulative_loads(w2)
    assert got == {
        layer: [a + b for a, b in zip(first[layer], extra[layer].tolist(), strict=True)] for layer in first
    }
    assert w2.counters["files"] == 3 and w2.step == 5
    w2.save()
    w3 = watch_once(d, "sglang", state=state)
    assert w3.counters["records"] == w2.counters["records"]  # nothing new: nothing read


def test_the_state_file_may_not_live_in_the_watched_folder_and_must_match(tmp_path: Path) -> None:
    _dumps(tmp_path / "d", 1)
    with pytest.raises(UsageError, match="never writes into"):
        watch_once(tmp_path / "d", "sglang", state=tmp_path / "d" / "sub" / "state.json")
    state = tmp_path / "s.json"
    watch_once(tmp_path / "d", "sglang", state=state).save()
    with pytest.raises(InvalidInputError, match="the watch state is for sglang"):
        watch_once(tmp_path / "d", "trace", state=state)
    state.write_text("{")
    with pytest.raises(InvalidInputError, match="not a usable watch state"):
        watch_once(tmp_path / "d", "sglang", state=state)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(splits=st.lists(st.integers(0, 4), min_size=1, max_size=5))
def test_dumps_arriving_over_many_polls_count_as_all_at_once(tmp_path_factory, splits: list[int]) -> None:
    tmp = tmp_path_factory.mktemp("stream")
    src, d = tmp / "src", tmp / "d"
    want = _dumps(src, 5)
    d.mkdir()
    files = sorted(src.iterdir())
    w = Watcher([d], WatchOptions("sglang", settle=0, check=None, window_seconds=None), log=lambda m: None)
    i = 0
    for n in splits + [len(files)]:
        for p in files[i : i + n]:
            shutil.copy(p, d / f".{p.name}")
            (d / f".{p.name}").rename(d / p.name)  # atomic rename, as a careful writer does
        i += n
        w.poll()
        w.report()
    assert cumulative_loads(w) == want


def test_sliding_window_by_steps_and_bounded_memory(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    opts = WatchOptions("sglang", settle=0, check=None, window_steps=4, window_seconds=None)
    w = Watcher([d], opts, log=lambda m: None)
    rows = []
    for i in range(12):
        lc = torch.zeros(1, 2, 4, dtype=torch.int64)
        lc[0, 1, i % 4] = 10  # one step a dump, all load on expert i % 4
        write_sglang_stat(d, lc, float(i))
        w.poll()
        rep, _ = w.report()
        rows.append(rep.layers[1]["load"])
        assert len(w.live.ring) <= 4
    assert rows[-1] == [10, 10, 10, 10]  # the last 4 steps: one of each
    assert rep.cumulative[1]["load"] == [30, 30, 30, 30]
    assert len(w.follower.states) == 12  # O(files present): deleted files are forgotten
    for p in d.iterdir():
        p.unlink()
    w.poll()
    assert w.follower.states == {}


def test_rules_alert_once_per_onset_and_resolve(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    logs: list[str] = []
    off = {"max_cv": "off", "min_entropy": "off", "max_dead": "off"}
    config = CheckConfig.from_values({"max_vio": 0.5, **off})
    opts = WatchOptions("sglang", settle=0, check=config, window_steps=1, window_seconds=None)
    w = Watcher([d], opts, log=logs.append)
    loads = [[100, 0, 0, 0], [100, 0, 0, 0], [25, 25, 25, 25]]
    got = []
    for i, load in enumerate(loads):
        lc = torch.zeros(1, 2, 4, dtype=torch.int64)
        lc[0, 1] = torch.tensor(load)
        write_sglang_stat(d, lc, float(i))
        w.poll()
        _, alerts = w.report()
        got.append([(a.rule, a.layer) for a in alerts])
    assert got == [[("max_vio", 1)], [("max_vio", 1)], []]
    assert [line.split(":")[0] for line in logs] == ["alert", "resolved"]
    assert "max_vio_rising" in w.rules() and "max_vio" in w.rules() and "max_cv" not in w.rules()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, 400), min_size=1, max_size=8))
def test_jsonl_appended_in_arbitrary_pieces_counts_as_written_at_once(
    tmp_path_factory, cuts: list[int]
) -> None:
    tmp = tmp_path_factory.mktemp("jsonl")
    e = 6
    g = torch.Generator().manual_seed(len(cuts))
    lines = [
        json.dumps(
            {
                "step": s,
                "layer": layer,
                "rank": 0,
                "num_tokens": 3,
                "topk": 2,
                "top_indices": torch.stack([torch.randperm(e, generator=g)[:2] for _ in range(3)]).tolist(),
            }
        )
        for s in range(6)
        for layer in (1, 2)
    ]
    data = ("\n".join(lines) + "\n").encode()
    whole = tmp / "whole"
    whole.mkdir()
    (whole / "router_trace_rank0.jsonl").write_bytes(data)
    want = cumulative_loads(watch_once(whole, "megatron", num_experts=e))
    d = tmp / "d"
    d.mkdir()
    target = d / "router_trace_rank0.jsonl"
    target.write_bytes(b"")
    opts = WatchOptions("megatron", DecodeOptions(num_experts=e), settle=0, check=None, window_seconds=None)
    w = Watcher([d], opts, log=lambda m: None)
    pos = 0
    for cut in cuts + [len(data)]:
        with open(target, "ab") as fh:
            fh.write(data[pos : pos + cut])  # a writer's buffer flushes anywhere, mid-line included
        pos = min(len(data), pos + cut)
        w.poll()
    assert cumulative_loads(w) == want and w.counters["bad_lines"] == 0


def test_tensor_parallel_memory_is_bounded_by_digests() -> None:
    from moediag.watch.decoders import _Recent

    recent = _Recent(capacity=8)
    big = torch.zeros(1 << 16, dtype=torch.int64)
    for i in range(100):
        assert not recent.seen("token", i, big)
    assert len(recent._keys) == 8 and all(len(k[2]) == 20 for k in recent._keys)
    assert recent.seen("token", 99, big) and not recent.seen("token", 0, big)


def test_a_dump_that_fails_half_way_adds_nothing(tmp_path: Path) -> None:
    d = tmp_path / "d"
    path, _ = sglang_per_token_dump(d, 1.0, passes=3, seed=0)
    obj = torch.load(path, weights_only=True)
    obj["records"][2]["topk_ids_of_layer"] = obj["records"][2]["topk_ids_of_layer"][:2]  # 2 of 4 layers
    torch.save(obj, path)
    logs: list[str] = []
    w = Watcher([d], WatchOptions("sglang", settle=0, check=None, window_seconds=None), log=logs.append)
    w.poll()
    assert w.counters["bad_files"] == 1 and w.counters["records"] == 0 and w.step == 0
    assert logs == [f"skipped {path}: record 2: topk_ids_of_layer has 2 layers, the map has 4"]
