from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers import import_routing
from moediag.trace import open_trace
from tests.importers.fixtures import trtllm_counts, write_trtllm

E, K = 8, 2


def _selected(seed: int, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(n)])


def _rank(folder: Path, rank: int, iters: range, layers: list[int], meta: bool = True) -> dict:
    recs = {
        (i, layer): trtllm_counts(_selected(rank * 1000 + i * 10 + layer), E)
        for i in iters
        for layer in layers
    }
    write_trtllm(folder, rank, recs, {"num_experts": E, "num_experts_per_token": K} if meta else None)
    return recs


def test_ranks_summed_value_by_value(tmp_path: Path) -> None:
    d = tmp_path / "expert_statistic"
    r0 = _rank(d, 0, range(100, 103), [3, 4])
    r1 = _rank(d, 1, range(100, 103), [3, 4])
    res = import_routing("trtllm", d, tmp_path / "t.safetensors")
    assert not res.per_token and res.layers == [3, 4] and res.num_steps == 3 and res.ranks == [0, 1]
    assert res.top_k == K and res.num_tokens == 10 * 3
    tr = open_trace(tmp_path / "t.safetensors")
    assert tr.meta.routing.num_experts == E and tr.meta.routing.top_k == K
    for layer in (3, 4):
        want = torch.stack([r0[(i, layer)] + r1[(i, layer)] for i in range(100, 103)])
        assert torch.equal(tr.expert_counts(layer), want)


def test_inconsistent_ranks(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _rank(d, 0, range(5), [1])
    _rank(d, 1, range(4), [1])
    with pytest.raises(InvalidInputError, match="inconsistent"):
        import_routing("trtllm", d, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_without_meta_info_needs_num_experts(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _rank(d, 0, range(2), [0], meta=False)
    with pytest.raises(MissingMetadataError, match="--num-experts"):
        import_routing("trtllm", d, tmp_path / "t")
    res = import_routing("trtllm", d, tmp_path / "t", num_experts=E)
    assert res.num_experts == E


def test_wrong_length_counts(tmp_path: Path) -> None:
    d = tmp_path / "s"
    write_trtllm(
        d, 0, {(0, 0): torch.zeros(5, dtype=torch.int64)}, {"num_experts": E, "num_experts_per_token": K}
    )
    with pytest.raises(InvalidInputError, match=r"expected \[8\]"):
        import_routing("trtllm", d, tmp_path / "t")
