"""Sequence-level aux loss, consecutive-token same-expert rate and per-step load against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moediag.analysis import analyze_trace
from moediag.stats.batch import LayerBatch
from moediag.stats.sequences import ConsecutiveStats, SeqAuxStats
from tests import _reference as ref
from tests.conftest import random_tensors, trace_metadata


@pytest.mark.parametrize("seed", range(4))
def test_seq_aux_loss_matches_reference(make_trace, seed: int) -> None:
    e, k, t = 8, 2, 90
    tensors = random_tensors(seed, tokens=t, num_experts=e, top_k=k, layers=(0,), sequences=5, skew=2.0)
    path = make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax"))
    row = analyze_trace(path, chunk_tokens=13).layer(0)
    z = tensors["layers.0.router_logits"].double().numpy()
    ids = ref.route_ref(z, k, "softmax")
    seq = tensors["tokens.sequence_ids"].numpy()
    want = ref.seq_aux_loss(ids, ref.softmax(z), seq, e)
    assert row["seq_aux_loss"] == pytest.approx(want, rel=1e-6)
    assert row["sequences"] == len(set(seq.tolist()))
    # differs from the whole-trace aux loss (the test can tell them apart)
    assert abs(row["seq_aux_loss"] - row["aux_loss"]) > 1e-6


def test_seq_aux_loss_hand_computed() -> None:
    # E = 2, k = 1; sequence 0: two tokens to expert 0 with p = (1, 0) -> 2 * (1*1) = 2;
    # sequence 1: tokens to 0 and 1 with p = (.5, .5) each -> 2 * (.5*.5 + .5*.5) = 1. Mean 1.5.
    ids = torch.tensor([[0], [0], [0], [1]])
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    b = LayerBatch(
        2, 1, ids, ids[:, 0], torch.arange(4), probs=probs, sequence_ids=torch.tensor([0, 0, 1, 1])
    )
    s = SeqAuxStats(2, 1)
    s.update(b.select(torch.tensor([True, True, False, False])))
    s.update(b.select(torch.tensor([False, False, True, False])))
    other = SeqAuxStats(2, 1)
    other.update(b.select(torch.tensor([False, False, False, True])))
    s.merge(other)
    out = s.compute()
    assert out["seq_aux_loss"] == pytest.approx(1.5)
    assert out["sequences"] == 2


def test_seq_aux_absent_without_sequence_ids(make_trace) -> None:
    tensors = random_tensors(0, tokens=20, num_experts=4, top_k=1, layers=(0,))
    row = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 1))).layer(0)
    assert row["seq_aux_loss"] is None


@pytest.mark.parametrize("with_seq", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_consecutive_same_rate(make_trace, seed: int, with_seq: bool) -> None:
    e, k, t = 4, 2, 120
    tensors = random_tensors(
        seed,
        tokens=t,
        num_experts=e,
        top_k=k,
        layers=(0,),
        ids=True,
        logits=False,
        sequences=6 if with_seq else None,
        skew=2.0,
    )
    row = analyze_trace(
        make_trace(tensors=tensors, metadata=trace_metadata(e, k, None)), chunk_tokens=11
    ).layer(0)
    top1 = tensors["layers.0.topk_ids"][:, 0].tolist()
    seq = tensors["tokens.sequence_ids"].tolist() if with_seq else None
    assert row["consecutive_same_rate"] == pytest.approx(ref.consecutive_same(top1, seq), rel=1e-12)
    shares = np.bincount(top1, minlength=e) / t
    assert row["consecutive_same_baseline"] == pytest.approx(float((shares**2).sum()))


def test_consecutive_top1_from_logits_is_the_highest_scored_choice(make_trace) -> None:
    e, k, t = 6, 3, 80
    tensors = random_tensors(9, tokens=t, num_experts=e, top_k=k, layers=(0,), sequences=3, skew=1.0)
    row = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k)), chunk_tokens=9).layer(0)
    z = tensors["layers.0.router_logits"].double().numpy()
    top1 = z.argmax(axis=1).tolist()
    seq = tensors["tokens.sequence_ids"].tolist()
    assert row["consecutive_same_rate"] == pytest.approx(ref.consecutive_same(top1, seq), rel=1e-12)


def test_consecutive_hand_computed() -> None:
    top1 = torch.tensor([2, 2, 1, 1, 1, 3])
    seq = torch.tensor([0, 0, 0, 1, 1, 1])
    ids = top1[:, None]
    # pairs within sequences: (2,2) (2,1) | (1,1) (1,3) -> 2 same of 4
    b = LayerBatch(4, 1, ids, top1, torch.arange(6), sequence_ids=seq)
    s = ConsecutiveStats(4)
    s.update(b.select(torch.arange(6) < 2))
    s.update(b.select((torch.arange(6) >= 2) & (torch.arange(6) < 4)))
    s.update(b.select(torch.arange(6) >= 4))
    assert s.compute()["consecutive_same_rate"] == pytest.approx(0.5)
    assert s.compute()["consecutive_pairs"] == 4


def test_per_step_load(make_trace) -> None:
    e, k, t = 5, 2, 60
    tensors = random_tensors(
        4, tokens=t, num_experts=e, top_k=k, layers=(0,), ids=True, logits=False, skew=1.0
    )
    step = torch.tensor([10] * 20 + [20] * 25 + [30] * 15)
    tensors["tokens.step"] = step
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, None)), chunk_tokens=7)
    got = a.to_dict(detail=True)["layers"][0]["step_load"]
    assert got["steps"] == [10, 20, 30]
    ids = tensors["layers.0.topk_ids"].numpy()
    for i, s in enumerate([10, 20, 30]):
        rows = ids[step.numpy() == s]
        counts = ref.counts_of(rows, e)
        assert got["load"][i] == counts
        assert got["max_vio"][i] == pytest.approx(ref.imbalance(counts, k, len(rows))["max_vio"])
        assert got["cv"][i] == pytest.approx(ref.imbalance(counts, k, len(rows))["cv"])
