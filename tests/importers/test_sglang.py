from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers import import_routing
from moediag.importers.sglang_records import physical_to_logical_counts
from moediag.trace import open_trace
from tests.importers.fixtures import (
    sglang_global_physical_count,
    sglang_p2l,
    sglang_per_token_record,
    write_sglang_csv,
    write_sglang_detail,
    write_sglang_stat,
)

L, E, P, K = 4, 6, 8, 2  # layer 0 is dense
MOE = [1, 2, 3]


def _logical(n: int, seed: int) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in MOE:
        out[layer] = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(n)])
    return out


def _records(rank: int, seed: int, p2l: torch.Tensor) -> tuple[list[dict], list[dict[int, torch.Tensor]]]:
    recs, logical = [], []
    # pass 0: prefill of two sequences (3 + 2 tokens); pass 1: decode of two requests
    for fp, (ids, pos, lens) in enumerate(
        [([11, 12, 13, 21, 22], [0, 1, 2, 0, 1], [3, 2]), ([14, 23], [3, 2], None)]
    ):
        lg = _logical(len(ids), seed * 10 + fp)
        logical.append(lg)
        recs.append(
            sglang_per_token_record(
                forward_pass_id=fp,
                rank=rank,
                logical_topk=lg,
                p2l=p2l,
                input_ids=[i + 100 * rank for i in ids],
                positions=pos,
                extend_seq_lens=lens,
                seed=seed * 100 + fp,
            )
        )
    return recs, logical


def test_per_token_maps_physical_to_logical_value_by_value(tmp_path: Path) -> None:
    p2l = sglang_p2l(L, E, P)
    recs, logical = _records(0, 1, p2l)
    write_sglang_detail(tmp_path / "dump", 0, recs, p2l, 1700000000.1)
    res = import_routing("sglang", tmp_path / "dump", tmp_path / "t.safetensors")
    assert res.per_token and res.layers == MOE and res.top_k == K and res.num_experts == E
    assert any("dense" in n for n in res.notes)
    tr = open_trace(tmp_path / "t.safetensors")
    assert sorted(tr.layers) == MOE  # dense layer 0 left out
    chunk = next(tr.iter_chunks())
    for layer in MOE:
        want = torch.cat([lg[layer] for lg in logical])
        assert torch.equal(chunk.layer_tensor(layer, "topk_ids").long(), want)
    assert chunk.token("input_ids").tolist() == [11, 12, 13, 21, 22, 14, 23]
    assert chunk.token("positions").tolist() == [0, 1, 2, 0, 1, 3, 2]
    assert chunk.token("sequence_ids").tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert chunk.token("step").tolist() == [0, 0, 0, 0, 0, 1, 1]
    # the physical ids really were physical (a replica beyond the logical range was used somewhere)
    assert any(int(r["topk_ids_of_layer"].max()) >= E for r in recs) or P == E


def test_per_token_tensor_parallel_duplicates_counted_once(tmp_path: Path) -> None:
    p2l = sglang_p2l(L, E, P)
    recs, _ = _records(0, 1, p2l)
    write_sglang_detail(tmp_path / "d", 0, recs, p2l, 1.0)
    recs1 = [dict(r, rank=1) for r in recs]
    write_sglang_detail(tmp_path / "d", 1, recs1, p2l, 1.0)
    res = import_routing("sglang", tmp_path / "d", tmp_path / "t")
    assert res.num_tokens == 7
    assert any("tensor parallel" in n for n in res.notes)


def test_per_token_data_parallel_ranks_concatenate(tmp_path: Path) -> None:
    p2l = sglang_p2l(L, E, P)
    r0, lg0 = _records(0, 1, p2l)
    r1, lg1 = _records(1, 2, p2l)
    write_sglang_detail(tmp_path / "d", 0, r0, p2l, 1.0)
    write_sglang_detail(tmp_path / "d", 1, r1, p2l, 1.0)
    res = import_routing("sglang", str(tmp_path / "d" / "*.pt"), tmp_path / "t", shard_tokens=4)
    assert res.num_tokens == 14 and res.ranks == [0, 1]
    tr = open_trace(tmp_path / "t")
    got = torch.cat([c.layer_tensor(2, "topk_ids") for c in tr.iter_chunks()]).long()
    want = torch.cat([lg[2] for lg in lg0 + lg1])
    assert torch.equal(got, want)
    seq = torch.cat([c.token("sequence_ids") for c in tr.iter_chunks()])
    assert seq.tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 5, 6, 7]


def test_inconsistent_ranks_error_and_no_output(tmp_path: Path) -> None:
    p2l = sglang_p2l(L, E, P)
    recs, _ = _records(0, 1, p2l)
    write_sglang_detail(tmp_path / "d", 0, recs, p2l, 1.0)
    other = sglang_p2l(L, E, P, seed=5)
    recs1, _ = _records(1, 2, other)
    write_sglang_detail(tmp_path / "d", 1, recs1, other, 1.0)
    with pytest.raises(InvalidInputError, match="not from the same run"):
        import_routing("sglang", tmp_path / "d", tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp folders left either


def test_per_pass_counts_folded_onto_logical(tmp_path: Path) -> None:
    p2l = sglang_p2l(L, E, P)
    recs0, _ = _records(0, 1, p2l)
    recs1, _ = _records(1, 3, p2l)
    strip = ("input_ids", "positions", "extend_seq_lens", "forward_mode", "topk_ids_of_layer", "misc_objects")
    pp0 = [{k: v for k, v in r.items() if k not in strip} for r in recs0]
    pp1 = [{k: v for k, v in r.items() if k not in strip} for r in recs1]
    write_sglang_detail(tmp_path / "d", 0, pp0, p2l, 1.0)
    write_sglang_detail(tmp_path / "d", 1, pp1, p2l, 1.0)
    res = import_routing("sglang", tmp_path / "d", tmp_path / "c.safetensors")
    assert not res.per_token and res.num_steps == 2 and res.layers == MOE
    tr = open_trace(tmp_path / "c.safetensors")
    for layer in MOE:
        got = tr.expert_counts(layer)
        for fp in range(2):
            phys = (recs0[fp]["global_physical_count"] + recs1[fp]["global_physical_count"]).long()
            # SGLang's own formula (_convert_global_physical_count_to_logical_count)
            want = torch.zeros(L, E, dtype=torch.int64).scatter_add_(1, p2l, phys)
            assert torch.equal(got[fp], want[layer])
        # and the total equals the per-token truth: k choices per token
        assert int(got.sum()) == K * 14


def test_physical_to_logical_counts_matches_sglang() -> None:
    p2l = sglang_p2l(3, 4, 7, seed=3)
    phys = torch.randint(0, 9, (5, 3, 7))
    got = physical_to_logical_counts(phys, p2l, 4)
    want = torch.zeros(5, 3, 4, dtype=torch.int64)
    want.scatter_add_(2, p2l.unsqueeze(0).expand(5, -1, -1), phys.long())
    assert torch.equal(got, want)


def test_stat_drops_empty_slots_and_dense_layers(tmp_path: Path) -> None:
    lc = torch.zeros(6, 3, 4, dtype=torch.int32)  # buffer of 6 steps, 3 layers, layer 0 dense
    lc[0, 1] = torch.tensor([5, 0, 2, 1])
    lc[0, 2] = torch.tensor([1, 1, 1, 5])
    lc[2, 1] = torch.tensor([0, 8, 0, 0])
    lc[2, 2] = torch.tensor([4, 4, 0, 0])
    write_sglang_stat(tmp_path / "s", lc, 1700000000.0)
    res = import_routing("sglang", tmp_path / "s", tmp_path / "c")
    assert res.layers == [1, 2] and res.num_steps == 2 and not res.per_token
    tr = open_trace(tmp_path / "c")
    assert sorted(tr.layers) == [1, 2]
    assert torch.equal(tr.expert_counts(1), lc[[0, 2], 1].long())
    assert torch.equal(tr.expert_counts(2), lc[[0, 2], 2].long())
    assert any("dense" in n for n in res.notes) and any("circular" in n for n in res.notes)


def test_legacy_csv(tmp_path: Path) -> None:
    write_sglang_csv(tmp_path / "c", 0, {3: {0: 5, 2: 7}, 5: {1: 4}})
    write_sglang_csv(tmp_path / "c", 1, {3: {0: 1}, 5: {3: 2}}).rename(
        tmp_path / "c" / "expert_distribution_rank1_timestamp1700000001.0.csv"
    )
    with pytest.raises(MissingMetadataError, match="--num-experts"):
        import_routing("sglang", tmp_path / "c", tmp_path / "o")
    res = import_routing("sglang", tmp_path / "c", tmp_path / "o", num_experts=4)
    tr = open_trace(tmp_path / "o")
    assert res.layers == [3, 5]
    assert tr.expert_counts(3).tolist() == [[6, 0, 7, 0]]
    assert tr.expert_counts(5).tolist() == [[0, 4, 0, 2]]


def test_global_physical_count_helper_agrees_with_records() -> None:
    p2l = sglang_p2l(L, E, P)
    recs, _ = _records(0, 1, p2l)
    r = recs[0]
    assert torch.equal(r["global_physical_count"], sglang_global_physical_count(r["topk_ids_of_layer"], P))
