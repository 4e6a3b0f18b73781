"""Writing traces: round trips, shards, atomic replacement, nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.trace import TraceWriter, build_metadata, open_trace, parse_metadata, write_trace
from tests.conftest import random_tensors, trace_metadata


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    trace = open_trace(path)
    out: dict[str, list[torch.Tensor]] = {}
    for chunk in trace.iter_chunks(7):
        for layer, info in trace.layers.items():
            for kind in info.kinds - {"selection_bias", "expert_counts"}:
                out.setdefault(f"layers.{layer}.{kind}", []).append(chunk.layer_tensor(layer, kind))
        for name in trace.token_fields:
            out.setdefault(f"tokens.{name}", []).append(chunk.token(name))
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_write_trace_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = random_tensors(
        0,
        tokens=40,
        num_experts=8,
        top_k=2,
        layers=(0, 3),
        ids=True,
        sequences=3,
        positions=True,
        mask=True,
        step=True,
        dtype=dtype,
    )
    tensors["layers.3.selection_bias"] = torch.linspace(-1, 1, 8)
    meta = build_metadata(
        num_experts=8,
        top_k=2,
        score_function="sigmoid",
        norm_topk_prob=True,
        n_group=2,
        topk_group=1,
        model="tiny",
        domains=["code", "prose"],
        extra={"recorder": {"v": 1}},
    )
    path = write_trace(tmp_path / "sub" / "t.safetensors", tensors, meta)
    assert path == tmp_path / "sub" / "t.safetensors"
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]  # no temp file left
    trace = open_trace(path)
    assert trace.meta.model == "tiny" and trace.meta.domains == ["code", "prose"]
    assert trace.meta.raw["recorder"] == '{"v": 1}'
    spec = trace.layers[3].spec
    assert (spec.score_function, spec.norm_topk_prob, spec.n_group, spec.topk_group) == (
        "sigmoid",
        True,
        2,
        1,
    )
    got = _read_all(path)
    for name, tensor in tensors.items():
        if name.endswith("selection_bias"):
            assert torch.equal(trace.selection_bias(3), tensor)
        else:
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_metadata_round_trip() -> None:
    meta = build_metadata(num_experts=64, top_k=6, score_function="softmax", norm_topk_prob=False)
    parsed = parse_metadata(meta)
    assert (parsed.routing.num_experts, parsed.routing.top_k, parsed.routing.norm_topk_prob) == (64, 6, False)
    assert all(isinstance(v, str) for v in meta.values())
    with pytest.raises(ValueError):
        build_metadata(num_experts=4, top_k=1, score_function="relu")


def test_write_trace_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "t.safetensors"
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors raises for a non-contiguous view
        write_trace(target, {"layers.0.router_logits": "not a tensor"}, trace_metadata())  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_write_trace_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "t.safetensors"
    write_trace(target, random_tensors(0, tokens=5, num_experts=4, layers=(0,)), trace_metadata(4, 2))
    write_trace(target, random_tensors(1, tokens=9, num_experts=4, layers=(0,)), trace_metadata(4, 2))
    assert open_trace(target).num_tokens == 9
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_trace_writer_shards_and_constants(tmp_path: Path) -> None:
    tensors = random_tensors(2, tokens=50, num_experts=4, top_k=2, layers=(0,), ids=True, sequences=4)
    bias = torch.tensor([0.1, 0.2, 0.3, 0.4])
    with TraceWriter(tmp_path / "out", trace_metadata(4, 2), shard_tokens=16) as w:
        for a in range(0, 50, 6):
            w.add({k: v[a : a + 6] for k, v in tensors.items()})
        w.set_constant("layers.0.selection_bias", bias)
    shards = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert shards == ["part-00000.safetensors", "part-00001.safetensors", "part-00002.safetensors"]
    assert w.tokens_written == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the temp folder is gone
    trace = open_trace(tmp_path / "out")
    assert trace.shard_tokens == [18, 18, 14]
    assert torch.equal(trace.selection_bias(0), bias)
    got = _read_all(tmp_path / "out")
    for name, tensor in tensors.items():
        assert torch.equal(got[name], tensor), name


def test_trace_writer_error_leaves_no_output(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        TraceWriter(tmp_path / "out", trace_metadata(4, 2), shard_tokens=4) as w,
    ):
        w.add(random_tensors(0, tokens=10, num_experts=4, layers=(0,)))
        raise RuntimeError("recorder crashed")
    assert list(tmp_path.iterdir()) == []


def test_trace_writer_replaces_existing_folder_only_when_done(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with TraceWriter(out, trace_metadata(4, 2)) as w:
        w.add(random_tensors(0, tokens=10, num_experts=4, layers=(0,)))
    w2 = TraceWriter(out, trace_metadata(4, 2), shard_tokens=3)
    w2.add(random_tensors(1, tokens=7, num_experts=4, layers=(0,)))
    assert open_trace(out).num_tokens == 10  # still the old trace while the new one is written
    w2.close()
    assert open_trace(out).num_tokens == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_trace_writer_rejects_inconsistent_batches(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "out", trace_metadata(4, 2))
    w.add({"layers.0.router_logits": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="differ"):
        w.add({"layers.0.router_logits": torch.zeros(3, 4), "tokens.mask": torch.ones(3, dtype=torch.bool)})
    fresh = TraceWriter(tmp_path / "other", trace_metadata(4, 2))
    with pytest.raises(ValueError, match="token count"):
        fresh.add({"layers.0.router_logits": torch.zeros(3, 4), "layers.0.topk_ids": torch.zeros(2, 2)})
    fresh.abort()
    with pytest.raises(ValueError, match="per-token"):
        w.set_constant("layers.0.router_logits", torch.zeros(3, 4))
    with pytest.raises(ValueError, match="set_constant"):
        w.add({"layers.0.selection_bias": torch.zeros(4)})
    w.abort()
    assert list(tmp_path.iterdir()) == []
    empty = TraceWriter(tmp_path / "none", trace_metadata(4, 2))
    with pytest.raises(ValueError, match="nothing was written"):
        empty.close()
    assert list(tmp_path.iterdir()) == []


def test_trace_writer_count_layers_are_not_multiplied_by_shards(tmp_path: Path) -> None:
    """Regression: expert_counts written into every shard were summed once per shard by the reader."""
    from moediag.analysis import analyze_trace

    with TraceWriter(tmp_path / "out", trace_metadata(4, 2), shard_tokens=5) as w:
        w.set_constant("layers.3.expert_counts", torch.tensor([[1, 2, 3, 4]]))
        for seed in range(3):
            w.add(random_tensors(seed, tokens=5, num_experts=4, layers=(0,)))
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert analyze_trace(tmp_path / "out").layer(3)["load"] == [1, 2, 3, 4]


def test_trace_writer_constant_set_after_a_shard_was_flushed(tmp_path: Path) -> None:
    """Regression: the documented order (add, then set_constant) left early shards without the constant."""
    with TraceWriter(tmp_path / "out", trace_metadata(4, 2), shard_tokens=4) as w:
        w.add(random_tensors(0, tokens=6, num_experts=4, layers=(0,)))
        w.add(random_tensors(1, tokens=6, num_experts=4, layers=(0,)))
        w.set_constant("layers.0.selection_bias", torch.ones(4))
        w.set_constant("layers.2.expert_counts", torch.tensor([[5, 0, 0, 1]]))
    trace = open_trace(tmp_path / "out")
    assert len(trace.shards) == 2
    assert torch.equal(trace.selection_bias(0), torch.ones(4))
    assert trace.expert_counts(2).tolist() == [[5, 0, 0, 1]]


def test_single_file_writer_streams_the_same_file_write_trace_would(tmp_path: Path) -> None:
    """One .safetensors file written batch by batch: the same tensors and metadata as the whole-trace
    write, readable by safetensors and by moediag, and nothing left behind on failure."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from moediag.trace import SingleFileTraceWriter, build_metadata, open_trace, trace_writer, write_trace

    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "layers.1.router_logits": torch.randn(n, 4, generator=g).to(torch.bfloat16),
            "layers.1.topk_ids": torch.randint(0, 4, (n, 2), generator=g).to(torch.int32),
            "tokens.mask": torch.rand(n, generator=g) < 0.9,
            "tokens.sequence_ids": torch.arange(n, dtype=torch.int64) // 5,
        }
        for n in (7, 0, 13)
    ]
    bias = torch.randn(4, generator=g)
    meta = build_metadata(num_experts=4, top_k=2, score_function="softmax")
    out = tmp_path / "streamed.safetensors"
    writer = trace_writer(out, meta)
    assert isinstance(writer, SingleFileTraceWriter)
    with writer:
        for b in batches:
            writer.add(b)
        writer.set_constant("layers.1.selection_bias", bias)
    whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]} | {"layers.1.selection_bias": bias}
    reference = write_trace(tmp_path / "whole.safetensors", whole, meta)
    got, want = load_file(str(out)), load_file(str(reference))
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == dict(meta)
    assert open_trace(out).num_tokens == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.safetensors", "whole.safetensors"]

    failed = tmp_path / "failed.safetensors"
    with pytest.raises(RuntimeError), trace_writer(failed, meta) as w:
        w.add(batches[0])
        raise RuntimeError("boom")
    assert not failed.exists() and len(list(tmp_path.iterdir())) == 2
