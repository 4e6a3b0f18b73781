"""Opening and validating traces: shards, chunks, metadata, overrides, and clean errors (fuzz included)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moediag.analysis import analyze_trace
from moediag.errors import InvalidInputError, MissingMetadataError, MoediagError
from moediag.trace import RoutingSpec, open_trace
from tests.conftest import assert_same, random_tensors, trace_metadata, write_raw


def test_layers_tokens_and_fields(make_trace) -> None:
    tensors = random_tensors(
        0,
        tokens=30,
        num_experts=6,
        top_k=2,
        layers=(1, 5),
        ids=True,
        sequences=3,
        positions=True,
        mask=True,
        step=True,
    )
    tensors["layers.9.expert_counts"] = torch.ones(2, 6, dtype=torch.int64)
    trace = open_trace(make_trace(tensors=tensors, metadata=trace_metadata(6, 2)))
    assert sorted(trace.layers) == [1, 5, 9]
    assert trace.num_tokens == 30
    assert (
        trace.layers[1].has_logits and "topk_ids" in trace.layers[1].kinds and not trace.layers[1].count_only
    )
    assert trace.layers[9].count_only and trace.layers[9].num_experts == 6
    assert trace.token_fields == {"sequence_ids", "positions", "mask", "step"}
    assert trace.layers[5].spec.top_k == 2 and trace.layers[5].spec.score_function == "softmax"


def test_chunks_cover_tokens_in_order_and_never_span_shards(tmp_path: Path) -> None:
    tensors = random_tensors(1, tokens=50, num_experts=4, top_k=1, layers=(0,))
    z = tensors["layers.0.router_logits"]
    for i, (a, b) in enumerate(((0, 13), (13, 14), (14, 50))):
        write_raw(
            tmp_path / "t" / f"part-{i:05d}.safetensors",
            {"layers.0.router_logits": z[a:b]},
            trace_metadata(4, 1),
        )
    trace = open_trace(tmp_path / "t")
    assert trace.shard_tokens == [13, 1, 36]
    chunks = list(trace.iter_chunks(5))
    assert [c.start for c in chunks] == [0, 5, 10, 13, 14, 19, 24, 29, 34, 39, 44, 49]
    got = torch.cat([c.layer_tensor(0, "router_logits") for c in chunks])
    assert torch.equal(got, z)
    assert all(c.stop - c.start == len(c) for c in chunks)
    with pytest.raises(ValueError):
        list(trace.iter_chunks(-1))


def test_folder_of_shards_reads_as_one_trace(tmp_path: Path) -> None:
    tensors = random_tensors(
        2,
        tokens=90,
        num_experts=8,
        top_k=2,
        layers=(0, 3),
        sequences=4,
        positions=True,
        mask=True,
        step=True,
        skew=1.0,
    )
    tensors["layers.3.selection_bias"] = torch.linspace(0, 1, 8)
    meta = trace_metadata(8, 2)
    single = write_raw(tmp_path / "one.safetensors", tensors, meta)
    # name order, not creation order; "part-10" after "part-02"
    cuts = {"part-02": (0, 40), "part-10": (40, 41), "part-11": (41, 90)}
    for name in ("part-11", "part-02", "part-10"):
        a, b = cuts[name]
        part = {k: v if k.endswith("selection_bias") else v[a:b] for k, v in tensors.items()}
        write_raw(tmp_path / "shards" / f"{name}.safetensors", part, meta)
    (tmp_path / "shards" / "notes.txt").write_text("ignored")
    one = analyze_trace(single, chunk_tokens=7).to_dict(detail=True)
    many = analyze_trace(tmp_path / "shards", chunk_tokens=7).to_dict(detail=True)
    assert_same(one["layers"], many["layers"], "layers")
    assert_same(one["summary"], many["summary"], "summary")
    assert many["meta"]["trace"]["shards"] == 3


def test_shards_must_agree(tmp_path: Path) -> None:
    t = random_tensors(0, tokens=10, num_experts=4, top_k=1, layers=(0,))
    write_raw(tmp_path / "a" / "p0.safetensors", t, trace_metadata(4, 1))
    write_raw(
        tmp_path / "a" / "p1.safetensors",
        {**t, "tokens.mask": torch.ones(10, dtype=torch.bool)},
        trace_metadata(4, 1),
    )
    with pytest.raises(InvalidInputError, match="different tensors") as info:
        open_trace(tmp_path / "a")
    assert info.value.path.endswith("p1.safetensors")
    write_raw(tmp_path / "b" / "p0.safetensors", t, trace_metadata(4, 1))
    write_raw(tmp_path / "b" / "p1.safetensors", t, trace_metadata(4, 1, "sigmoid"))
    with pytest.raises(InvalidInputError, match="metadata differs"):
        open_trace(tmp_path / "b")


def test_selection_bias_may_move_between_shards(tmp_path: Path) -> None:
    """A bias that moves during training (DeepSeek-V3) is applied shard by shard, not averaged or refused."""
    logits = torch.zeros(6, 4)  # ties everywhere: the bias alone decides
    meta = trace_metadata(4, 1, "sigmoid")
    write_raw(
        tmp_path / "c" / "p0.safetensors",
        {"layers.0.router_logits": logits, "layers.0.selection_bias": torch.tensor([0.0, 0, 1, 0])},
        meta,
    )
    write_raw(
        tmp_path / "c" / "p1.safetensors",
        {"layers.0.router_logits": logits, "layers.0.selection_bias": torch.tensor([0.0, 0, 0, 1])},
        meta,
    )
    assert analyze_trace(tmp_path / "c").layer(0)["load"] == [0, 0, 6, 6]
    write_raw(
        tmp_path / "d" / "p0.safetensors",
        {"layers.0.router_logits": logits, "layers.0.selection_bias": torch.full((4,), float("nan"))},
        meta,
    )
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        analyze_trace(tmp_path / "d")


@pytest.mark.parametrize(
    ("drop", "tensors_kw", "flag"),
    [
        ("top_k", {}, "--top-k"),
        ("score_function", {}, "--score-function"),
        ("num_experts", {"logits": False, "ids": True}, "--num-experts"),
    ],
)
def test_missing_metadata_names_the_flag(make_trace, drop: str, tensors_kw: dict, flag: str) -> None:
    meta = trace_metadata(6, 2, "softmax")
    del meta[drop]
    tensors = random_tensors(0, tokens=12, num_experts=6, top_k=2, layers=(0,), **tensors_kw)
    path = make_trace(tensors=tensors, metadata=meta)
    with pytest.raises(MissingMetadataError) as info:
        open_trace(path)
    assert flag in info.value.message and info.value.path == str(path)
    over = {
        "top_k": RoutingSpec(top_k=2),
        "score_function": RoutingSpec(score_function="softmax"),
        "num_experts": RoutingSpec(num_experts=6),
    }[drop]
    trace = open_trace(path, overrides=over)
    assert trace.layers[0].num_experts == 6 and trace.layers[0].spec.top_k == 2


def test_top_k_and_experts_come_from_tensors_when_metadata_lacks_them(make_trace) -> None:
    tensors = random_tensors(0, tokens=12, num_experts=6, top_k=3, layers=(0,), ids=True)
    trace = open_trace(make_trace(tensors=tensors, metadata=trace_metadata(None, None, "softmax")))
    assert trace.layers[0].num_experts == 6 and trace.layers[0].spec.top_k == 3


def test_overrides_replace_metadata_and_layer_overrides(make_trace) -> None:
    tensors = random_tensors(0, tokens=20, num_experts=8, top_k=2, layers=(0, 1))
    meta = trace_metadata(8, 2, "softmax", **{"layers.1.top_k": "3"})
    path = make_trace(tensors=tensors, metadata=meta)
    assert open_trace(path).layers[1].spec.top_k == 3
    trace = open_trace(path, overrides=RoutingSpec(top_k=1, score_function="sigmoid"))
    assert all(
        info.spec.top_k == 1 and info.spec.score_function == "sigmoid" for info in trace.layers.values()
    )


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda t, m: m.update(version="2"), "unsupported trace version"),
        (lambda t, m: m.pop("version"), "unsupported trace version"),
        (lambda t, m: m.update(format="something-else"), "not a moediag trace"),
        (lambda t, m: m.update(top_k="two"), "not an integer"),
        (lambda t, m: m.update(score_function="relu"), "score_function"),
        (lambda t, m: m.update(norm_topk_prob="maybe"), "boolean"),
        (lambda t, m: m.update(domains="[1, 2]"), "domains"),
        (lambda t, m: m.update(domains="{"), "domains"),
        (lambda t, m: m.update(num_experts="5"), "num_experts=5"),
        (lambda t, m: m.update(top_k="9"), "between 1 and num_experts"),
        (lambda t, m: m.update(top_k="0"), "between 1 and num_experts"),
        (lambda t, m: m.update(n_group="3"), "together"),
        (lambda t, m: m.update(n_group="3", topk_group="1"), "does not divide"),
        (lambda t, m: m.update(n_group="2", topk_group="3"), "topk_group"),
        (lambda t, m: t.update({"layers.0.bogus": torch.zeros(3)}), "unknown tensor"),
        (lambda t, m: t.update({"model.embed": torch.zeros(3)}), "unknown tensor"),
        (lambda t, m: t.update({"tokens.colour": torch.zeros(3)}), "unknown tensor"),
        (lambda t, m: t.update({"layers.0.router_logits": torch.zeros(16, 8, dtype=torch.int32)}), "dtype"),
        (lambda t, m: t.update({"layers.0.router_logits": torch.zeros(16, 8, 1)}), "dimensions"),
        (lambda t, m: t.update({"layers.1.router_logits": torch.zeros(15, 8)}), "token counts differ"),
        (lambda t, m: t.update({"tokens.mask": torch.ones(17, dtype=torch.bool)}), "token counts differ"),
        (lambda t, m: t.update({"tokens.mask": torch.ones(16)}), "dtype"),
        (lambda t, m: t.update({"layers.0.topk_ids": torch.zeros(16, 3, dtype=torch.int64)}), "columns"),
        (lambda t, m: t.update({"layers.0.topk_ids": torch.zeros(16, 2).float()}), "dtype"),
        (lambda t, m: t.update({"layers.0.topk_weights": torch.zeros(16, 2)}), "topk_weights"),
        (lambda t, m: t.update({"layers.0.selection_bias": torch.zeros(7)}), "disagree"),
        (
            lambda t, m: t.update(
                {
                    "layers.1.expert_counts": torch.zeros(2, 8, dtype=torch.int64),
                    "layers.1.topk_ids": torch.zeros(16, 2, dtype=torch.int64),
                }
            ),
            "one or the other",
        ),
        (lambda t, m: t.update({"layers.1.topk_weights": torch.zeros(16, 2)}), "no router_logits"),
        (lambda t, m: [t.pop(k) for k in list(t)], "no layers"),
        (lambda t, m: t.update({"layers.0.router_logits": torch.zeros(0, 8)}), "0 tokens"),
    ],
)
def test_invalid_traces(make_trace, mutate, words: str) -> None:
    tensors = random_tensors(0, tokens=16, num_experts=8, top_k=2, layers=(0,))
    meta = trace_metadata(8, 2, "softmax")
    mutate(tensors, meta)
    path = make_trace(tensors=tensors, metadata=meta)
    with pytest.raises(InvalidInputError) as info:
        open_trace(path)
    assert words in info.value.message
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    ("ids", "words"),
    [
        ([[0, 8]], "expert id 8"),
        ([[0, -2]], "expert id -2"),
        ([[3, 3]], "same expert twice"),
    ],
)
def test_bad_expert_ids_found_while_reading(make_trace, ids, words: str) -> None:
    good = torch.tensor([[0, 1]] * 20)
    bad = torch.cat([good, torch.tensor(ids)])
    path = make_trace(tensors={"layers.0.topk_ids": bad}, metadata=trace_metadata(8, 2, None))
    with pytest.raises(InvalidInputError, match=words) as info:
        analyze_trace(path, chunk_tokens=6)
    assert "token 20" in info.value.message and info.value.path == str(path)


def test_duplicate_in_masked_row_is_ignored_and_empty_slots_allowed(make_trace) -> None:
    ids = torch.tensor([[0, 1], [2, 2], [3, -1], [-1, -1]])
    tensors = {"layers.0.topk_ids": ids, "tokens.mask": torch.tensor([1, 0, 1, 1], dtype=torch.uint8)}
    row = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 2, None))).layer(0)
    assert row["load"] == [1, 1, 0, 1]
    assert row["empty_slots"] == 3


def test_negative_counts_rejected(make_trace) -> None:
    path = make_trace(
        tensors={"layers.0.expert_counts": torch.tensor([[1, -1]])}, metadata=trace_metadata(2, 1)
    )
    with pytest.raises(InvalidInputError, match="negative"):
        analyze_trace(path)


def test_missing_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        open_trace(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="empty trace"):
        open_trace(tmp_path / "empty")


# -- fuzz ------------------------------------------------------------------------------------------
def _valid_trace_bytes(tmp_path: Path) -> bytes:
    tensors = random_tensors(
        3, tokens=24, num_experts=4, top_k=2, layers=(0, 1), ids=True, sequences=3, positions=True, mask=True
    )
    tensors["layers.1.selection_bias"] = torch.zeros(4)
    tensors["layers.2.expert_counts"] = torch.ones(2, 4, dtype=torch.int64)
    return write_raw(tmp_path / "valid.safetensors", tensors, trace_metadata(4, 2)).read_bytes()


def _exercise(path: Path) -> None:
    try:
        trace = open_trace(path)
        analyze_trace(trace, chunk_tokens=5).to_dict(detail=True)
    except MoediagError as exc:
        assert isinstance(exc, InvalidInputError), type(exc)
        assert exc.path is not None


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(blob=st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    _exercise(path)


@FUZZ
@given(
    seed=st.integers(0, 2**32 - 1),
    where=st.sampled_from(["header", "data", "anywhere", "truncate"]),
    flips=st.integers(1, 8),
)
def test_fuzz_mutated_valid_trace(tmp_path: Path, seed: int, where: str, flips: int) -> None:
    blob = bytearray(_valid_trace_bytes(tmp_path))
    rng = random.Random(seed)
    n = int.from_bytes(blob[:8], "little")
    if where == "truncate":
        blob = blob[: rng.randrange(len(blob))]
    else:
        lo, hi = {"header": (0, 8 + n), "data": (8 + n, len(blob)), "anywhere": (0, len(blob))}[where]
        for _ in range(flips):
            i = rng.randrange(lo, hi)
            blob[i] = rng.choice([rng.randrange(256), blob[i] ^ (1 << rng.randrange(8)), ord("9"), ord('"')])
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(blob))
    _exercise(path)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_mutated_header_values(tmp_path: Path, seed: int) -> None:
    """Structured mutations: change a number or a name in the JSON header, keep the length prefix right."""
    import json

    blob = _valid_trace_bytes(tmp_path)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    rng = random.Random(seed)
    name = rng.choice(sorted(header))
    entry = header[name]
    choice = rng.randrange(6)
    if name == "__metadata__":
        key = rng.choice(sorted(entry))
        entry[key] = rng.choice(["", "0", "-1", "99999999999", "softmax", "[]", "null", "1.5"])
    elif choice == 0:
        entry["shape"] = [rng.randrange(0, 40) for _ in range(rng.randrange(0, 4))]
    elif choice == 1:
        entry["data_offsets"] = [rng.randrange(0, 3000), rng.randrange(0, 3000)]
    elif choice == 2:
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F8_E4M3", "U32", "X"])
    elif choice == 3:
        header[rng.choice(["layers.0.topk_ids", "layers.7.router_logits", "tokens.step", "layers.x.a"])] = (
            entry
        )
    elif choice == 4:
        del header[name]
    else:
        entry["shape"] = [2**40, 2**40]
    raw = json.dumps(header).encode()
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n :])
    _exercise(path)
