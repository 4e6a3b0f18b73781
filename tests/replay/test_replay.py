"""Replay: routing recorded from real transformers models reproduced exactly in fp32; what-ifs by hand."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from moediag.errors import InvalidInputError, UsageError
from moediag.replay import load_bias_file, replay
from moediag.trace import build_metadata, open_trace, write_trace
from tests.replay.helpers import identity_checkpoint, input_trace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from tests.record.conftest import CODE, PROSE, build  # noqa: E402

#: softmax (+/- renormalisation), sigmoid + bias + groups, top-k then softmax + logit bias
FAMILIES = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3", "gpt_oss"]


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Any]]:
    """Each family saved once, and 192 tokens of prose and code recorded with router inputs."""
    from moediag.record import record

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("replay")
    (root / "prose.txt").write_text(PROSE)
    (root / "code.py").write_text(CODE)
    out = {}
    for name in FAMILIES:
        model = build(name)
        model.save_pretrained(root / f"model-{name}")
        record(
            root / f"model-{name}",
            [root / "prose.txt", root / "code.py"],
            root / f"trace-{name}",
            max_tokens=192,
            seq_len=48,
            batch_size=4,
            router_inputs=True,
            device="cpu",
        )
        out[name] = (root / f"model-{name}", root / f"trace-{name}", model)
    return out


def _layer_data(trace_path: Path, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    trace = open_trace(trace_path)
    xs, ids = [], []
    for chunk in trace.iter_chunks():
        xs.append(chunk.layer_tensor(layer, "router_input"))
        ids.append(chunk.layer_tensor(layer, "topk_ids"))
    return torch.cat(xs), torch.cat(ids).long()  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_reproduces_recorded_topk_exactly(family: str, recorded) -> None:
    """fp32 replay == recorded top-k == the family's own router module on the same inputs."""
    from moediag.record import find_routers

    ckpt, trace, model = recorded[family]
    doc = replay(ckpt, trace, device="cpu", chunk_tokens=80).to_dict()
    assert doc["meta"]["kind"] == "replay" and doc["meta"]["format"] == 1 and doc["meta"]["device"] == "cpu"
    assert doc["summary"]["match"] is True and doc["skipped"] == []
    sites = {s.layer: s for s in find_routers(model)}
    for row in doc["layers"]:
        assert row["tokens"] == row["compared"] == 192
        assert row["top1_agreement"] == row["topk_agreement"] == row["topk_overlap"] == 1.0
        assert row["mismatched_tokens"] == 0
        assert row["logits_max_abs_diff"] <= 1e-5
        x, rec = _layer_data(trace, row["layer"])
        with torch.no_grad():
            _, _, theirs = sites[row["layer"]].module(x)
        assert torch.equal(rec.sort(-1).values, theirs.long().sort(-1).values)
        assert sum(row["stats"]["load"]) == 192 * row["top_k"] == sum(row["load_before"])


def test_deepseek_bias_and_gpt_oss_logit_bias_matter(recorded) -> None:
    """Without the selection bias DeepSeek-V3's replay no longer matches; the what-if says how much moved."""
    ckpt, trace, _ = recorded["deepseek_v3"]
    doc = replay(ckpt, trace, device="cpu", bias=None).to_dict()
    assert doc["summary"]["topk_agreement"] == 1.0  # agreement is always with the checkpoint's own routing
    changed = [row["whatif_changed_share"] for row in doc["layers"]]
    assert all(0 < c <= 1 for c in changed)
    # the bias linspace(-0.3, 0.3) pushes choices to high-index experts: resetting it moves load down
    for row in doc["layers"]:
        load, before = row["stats"]["load"], row["load_before"]
        assert sum(load[:4]) > sum(before[:4])


def test_bf16_agreement_is_measured(recorded) -> None:
    ckpt, trace, _ = recorded["mixtral"]
    doc = replay(ckpt, trace, device="cpu", dtype="bf16").to_dict()
    assert doc["meta"]["dtype"] == "bfloat16"
    s = doc["summary"]
    assert 0.5 <= s["topk_agreement"] <= 1.0
    assert s["mismatched_tokens"] == round((1 - s["topk_agreement"]) * s["compared"])


def test_hidden_size_mismatch_is_a_clear_error(recorded, tmp_path: Path) -> None:
    _, trace, _ = recorded["mixtral"]
    other = identity_checkpoint(tmp_path / "h16", 4, 16, top_k=2)
    with pytest.raises(InvalidInputError, match=r"router_input has width 32 .* hidden size 16"):
        replay(other, trace, device="cpu")


def test_layers_without_router_input_are_skipped(tmp_path: Path) -> None:
    ckpt = identity_checkpoint(tmp_path / "c", 4)
    x = torch.randn(10, 4)
    tensors = {
        "layers.0.router_input": x,
        "layers.0.topk_ids": x.topk(1, -1).indices.int(),
        "layers.5.topk_ids": torch.zeros(10, 1, dtype=torch.int32),
    }
    path = write_trace(tmp_path / "t.safetensors", tensors, build_metadata(num_experts=4, top_k=1))
    doc = replay(ckpt, path, device="cpu").to_dict()
    assert [row["layer"] for row in doc["layers"]] == [0]
    assert doc["skipped"] == [{"layer": 5, "reason": "no router_input in the trace"}]
    tensors.pop("layers.0.router_input")
    path = write_trace(tmp_path / "t2.safetensors", tensors, build_metadata(num_experts=4, top_k=1))
    with pytest.raises(InvalidInputError, match="nothing to replay"):
        replay(ckpt, path, device="cpu")


def test_mismatch_is_reported_per_layer(tmp_path: Path) -> None:
    ckpt = identity_checkpoint(tmp_path / "c", 4, top_k=2)
    x = torch.tensor([[4.0, 3, 2, 1], [1, 2, 3, 4], [4, 1, 3, 2], [0, 0, 0, 0]])
    # token 1: same set, other order; token 2: other first choice; token 3: a full tie broken the other way
    picked = set(torch.softmax(x[3:], -1).topk(2, -1).indices[0].tolist())
    other = sorted(set(range(4)) - picked)
    recorded_ids = torch.tensor([[0, 1], [3, 2], [2, 0], other])
    path = input_trace(tmp_path / "t.safetensors", x, top_k=2, topk_ids=recorded_ids)
    row = replay(ckpt, path, device="cpu").to_dict()["layers"][0]
    assert row["topk_agreement"] == 0.75
    assert row["top1_agreement"] == 0.5  # token 2 first choice 0 vs 2, token 3
    assert row["topk_overlap"] == (2 + 2 + 2 + 0) / 8
    assert row["mismatched_tokens"] == 1 and row["mismatched_near_ties"] == 1


def test_top_k_what_if_hand_case(tmp_path: Path) -> None:
    ckpt = identity_checkpoint(tmp_path / "c", 4)
    x = torch.tensor([[5.0, 4, 0, 0], [5, 0, 4, 0], [0, 0, 5, 4], [0, 5, 0, 4]])
    path = input_trace(tmp_path / "t.safetensors", x, top_k=1)
    doc = replay(ckpt, path, device="cpu", top_k=2).to_dict()
    row = doc["layers"][0]
    assert row["load_before"] == [2, 1, 1, 0]
    assert row["stats"]["load"] == [2, 2, 2, 2]
    assert row["whatif_top_k"] == 2 and row["whatif_changed_share"] == 1.0
    assert row["whatif_topk_overlap"] == 1.0  # every first choice is kept
    shrink = replay(ckpt, input_trace(tmp_path / "t2.safetensors", x, top_k=2), device="cpu", top_k=1)
    assert shrink.to_dict()["layers"][0]["whatif_topk_overlap"] == 0.5  # k 2 -> 1 keeps half the choices
    assert row["stats"]["max_vio"] == 0.0 and row["max_vio_before"] == pytest.approx(2 / 1 - 1)
    with pytest.raises(UsageError, match="--top-k 5"):
        replay(ckpt, path, device="cpu", top_k=5)


def test_capacity_drops_hand_case(tmp_path: Path) -> None:
    """4 tokens of one sequence all choose expert 0: C = ceil(1 * 1 * 4 / 2) = 2, so half drop; the position
    policy drops the last two, the probs policy the two with the lowest gate weight."""
    ckpt = identity_checkpoint(tmp_path / "c", 2)
    x = torch.tensor([[1.0, 0], [3, 0], [2, 0], [4, 0]])
    path = input_trace(tmp_path / "t.safetensors", x, top_k=1, sequence_ids=torch.zeros(4))
    doc = replay(ckpt, path, device="cpu", capacity_factor=1.0, drop_policy="position").to_dict()
    cap = doc["layers"][0]["capacity"]
    assert cap["drop_rate"] == 0.5 and cap["drop_policy"] == "token-order"  # the former name resolves
    assert cap["drop_rate_other_policy"] == {"highest-weight": 0.5, "first-choices-first": 0.5}
    assert doc["summary"]["drop_rate_max"] == 0.5
    # positions 0..3 are all in bucket 0; where they drop shows with several buckets, not here
    assert cap["drop_rate_by_position"]["rate"][0] == 0.5
    assert set(cap["drop_rate_by_position"]["rate_by_policy"]) == {
        "token-order",
        "highest-weight",
        "first-choices-first",
    }
    floor = replay(ckpt, path, device="cpu", capacity_factor=1.0, min_capacity=3).to_dict()
    assert floor["layers"][0]["capacity"]["drop_rate"] == 0.25  # C = max(2, 3) = 3
    assert floor["meta"]["settings"]["min_capacity"] == 3
    with pytest.raises(UsageError, match="drop policy 'random'"):
        replay(ckpt, path, device="cpu", capacity_factor=1.0, drop_policy="random")
    doc2 = replay(ckpt, path, device="cpu", capacity_factor=2.0, drop_policy="probs").to_dict()
    assert doc2["layers"][0]["capacity"]["drop_rate"] == 0.0  # C = 4
    doc3 = replay(ckpt, path, device="cpu", capacity_factor=1.0, top_k=2).to_dict()
    # k = 2: expert 1 takes all 4 tokens as well, C = ceil(1 * 2 * 4 / 2) = 4: nothing drops
    assert doc3["layers"][0]["capacity"]["drop_rate"] == 0.0


def test_bias_reset_and_bias_file(tmp_path: Path) -> None:
    """A selection bias of +10 on expert 3 takes every token; resetting it routes by the logits."""
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    ckpt = identity_checkpoint(tmp_path / "c", 4, family="deepseek_v3", selection_bias=bias)
    x = torch.tensor([[3.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [3, 0, 0, 0]])
    path = input_trace(
        tmp_path / "t.safetensors", x, top_k=1, score_function="sigmoid", topk_ids=torch.full((4, 1), 3)
    )
    base = replay(ckpt, path, device="cpu").to_dict()["layers"][0]
    assert base["topk_agreement"] == 1.0 and base["stats"]["load"] == [0, 0, 0, 4]
    reset = replay(ckpt, path, device="cpu", bias=None).to_dict()["layers"][0]
    assert reset["topk_agreement"] == 1.0  # agreement: the checkpoint's routing, whatever the what-if
    assert reset["stats"]["load"] == [2, 1, 1, 0] and reset["whatif_changed_share"] == 1.0
    f = tmp_path / "bias.json"
    f.write_text('{"0": [0, 10, 0, 0]}')
    moved = replay(ckpt, path, device="cpu", bias=load_bias_file(f)).to_dict()["layers"][0]
    assert moved["stats"]["load"] == [0, 4, 0, 0]
    f.write_text('{"0": [0, 10]}')
    with pytest.raises(UsageError, match="2 values but the layer has 4 experts"):
        replay(ckpt, path, device="cpu", bias=load_bias_file(f))


def test_noise_flips_follow_the_margin(tmp_path: Path) -> None:
    """Half the tokens tie exactly (flip with probability 1/2 under any noise), half have a margin of 10
    logits (never flip at sigma 0.1): flip share ~ 1/4, all of it in the smallest-margin bucket."""
    ckpt = identity_checkpoint(tmp_path / "c", 4)
    tie = torch.tensor([1.0, 1.0, -5, -5]).expand(200, 4)
    clear = torch.tensor([10.0, 0, 0, 0]).expand(200, 4)
    path = input_trace(tmp_path / "t.safetensors", torch.cat([tie, clear]), top_k=1)
    doc = replay(ckpt, path, device="cpu", noise=0.1, samples=20, seed=1).to_dict()
    noise = doc["layers"][0]["noise"]
    assert noise["samples"] == 20 and noise["sigma"] == 0.1
    assert abs(noise["flip_share"] - 0.25) < 0.03
    by = noise["by_margin"]
    assert by["token_samples"][0] == 200 * 20 and by["token_samples"][-1] == 200 * 20
    assert abs(by["flip_share"][0] - 0.5) < 0.06 and by["flip_share"][-1] == 0.0
    again = replay(ckpt, path, device="cpu", noise=0.1, samples=20, seed=1).to_dict()
    assert again["layers"][0]["noise"] == noise  # seeded


def test_ep_balancedness_before_after_hand_case(tmp_path: Path) -> None:
    """Loads [4, 4, 1, 1] on 2 ranks: contiguous 8 | 2 (balancedness 5/8), balanced 5 | 5 (1.0)."""
    ckpt = identity_checkpoint(tmp_path / "c", 4)
    rows = [0] * 4 + [1] * 4 + [2, 3]
    x = torch.nn.functional.one_hot(torch.tensor(rows), 4).float()
    path = input_trace(tmp_path / "t.safetensors", x, top_k=1)
    res = replay(ckpt, path, device="cpu", ep_size=2, placement="balanced")
    ep = res.to_dict()["layers"][0]["ep"]
    assert ep["rank_load_before"] == [8.0, 2.0] and ep["balancedness_before"] == 0.625
    assert ep["rank_load_after"] == [5.0, 5.0] and ep["balancedness_after"] == 1.0
    assert res.placement == {0: [[0, 2], [1, 3]]}
    pdoc = res.placement_document()
    assert pdoc is not None and pdoc["layers"] == {"0": [[0, 2], [1, 3]]}
    contig = replay(ckpt, path, device="cpu", ep_size=2).to_dict()
    assert contig["summary"]["balancedness_after_mean"] == contig["summary"]["balancedness_before_mean"]
    with pytest.raises(UsageError, match="does not divide"):
        replay(ckpt, path, device="cpu", ep_size=3)
    rep = replay(ckpt, path, device="cpu", ep_size=2, placement="balanced", replicas=2).to_dict()
    ep2 = rep["layers"][0]["ep"]
    assert ep2["replicas"] == 2 and math.isclose(ep2["balancedness_after"], 1.0)


def test_ep_busiest_rank_and_all_to_all_hand_case(tmp_path: Path) -> None:
    """Top-2 on 4 experts, 2 ranks (experts 0-1 | 2-3): three tokens to {0, 1} (one rank) and one to
    {0, 2} (two ranks): 1.25 ranks a token; hidden 4 in bf16, half the destinations remote, there and back:
    2 x 1.25 x 1/2 x 4 x 2 = 10 bytes. Rank loads 7 | 1: the busiest rank takes 7/4 of a balanced step."""
    from moediag.replay import a2a_bytes

    ckpt = identity_checkpoint(tmp_path / "c", 4, top_k=2)
    pairs = [(0, 1)] * 3 + [(0, 2)]
    x = torch.stack(
        [
            2 * torch.nn.functional.one_hot(torch.tensor(a), 4)
            + torch.nn.functional.one_hot(torch.tensor(b), 4)
            for a, b in pairs
        ]
    ).float()
    path = input_trace(tmp_path / "t.safetensors", x, top_k=2)
    doc = replay(ckpt, path, device="cpu", ep_size=2, placement="balanced", chunk_tokens=3).to_dict()
    ep = doc["layers"][0]["ep"]
    assert ep["rank_load_before"] == [7.0, 1.0]
    assert ep["busiest_rank_inflation_before"] == pytest.approx(7 / 4)
    assert ep["busiest_rank_inflation_after"] == pytest.approx(max(ep["rank_load_after"]) / 4)
    assert ep["a2a_ranks_per_token"] == pytest.approx(1.25)
    assert ep["a2a_bytes_per_token"] == pytest.approx(10.0) == a2a_bytes(1.25, 2, 4)
    s = doc["summary"]
    assert s["busiest_rank_inflation_before_max"] == pytest.approx(7 / 4)
    assert s["a2a_bytes_per_token"] == pytest.approx(10.0)
    # one rank: nothing crosses the network, and every step is balanced
    one = replay(ckpt, path, device="cpu", ep_size=1).to_dict()["layers"][0]["ep"]
    assert one["a2a_bytes_per_token"] == 0.0 and one["busiest_rank_inflation_before"] == 1.0


def test_hierarchical_placement_and_node_loads(tmp_path: Path) -> None:
    """Loads [4, 4, 1, 1] in groups {0, 1} and {2, 3} on 2 nodes: whole groups per node, so the node loads
    are 8 | 2 whatever the packing (1 GPU per node); with 2 GPUs per node each node splits its group."""
    ckpt = identity_checkpoint(tmp_path / "c", 4)
    rows = [0] * 4 + [1] * 4 + [2, 3]
    x = torch.nn.functional.one_hot(torch.tensor(rows), 4).float()
    path = input_trace(tmp_path / "t.safetensors", x, top_k=1)
    kw: dict[str, Any] = {"device": "cpu", "placement": "hierarchical", "nodes": 2, "expert_groups": 2}
    ep = replay(ckpt, path, ep_size=2, **kw).to_dict()["layers"][0]["ep"]
    assert ep["rank_load_after"] == [8.0, 2.0] and ep["node_load_after"] == [8.0, 2.0]
    ep4 = replay(ckpt, path, ep_size=4, **kw).to_dict()["layers"][0]["ep"]
    assert ep4["rank_load_after"] == [4.0, 4.0, 1.0, 1.0] and ep4["node_balancedness_after"] == 0.625
    with pytest.raises(UsageError, match="needs --expert-groups"):
        replay(ckpt, path, device="cpu", ep_size=2, placement="hierarchical", nodes=2)
    with pytest.raises(UsageError, match="needs --nodes"):
        replay(ckpt, path, device="cpu", ep_size=2, placement="hierarchical", expert_groups=2)
    # --nodes with another placement only adds the per-node view
    bal = replay(ckpt, path, device="cpu", ep_size=2, placement="balanced", nodes=2).to_dict()["layers"][0][
        "ep"
    ]
    assert bal["node_load_after"] == [5.0, 5.0] and bal["node_balancedness_after"] == 1.0


def test_chunking_and_masks_do_not_change_results(recorded) -> None:
    ckpt, trace, _ = recorded["olmoe"]
    a = replay(ckpt, trace, device="cpu", capacity_factor=1.25, chunk_tokens=7).to_dict()
    b = replay(ckpt, trace, device="cpu", capacity_factor=1.25).to_dict()
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert ra["capacity"] == rb["capacity"]
        for key, value in ra["stats"].items():
            assert value == (pytest.approx(rb["stats"][key]) if key.endswith("loss") else rb["stats"][key])


def test_masked_and_non_finite_tokens_are_left_out(tmp_path: Path) -> None:
    ckpt = identity_checkpoint(tmp_path / "c", 2)
    x = torch.tensor([[1.0, 0], [0, 1], [1, 0], [float("nan"), 0]])
    mask = torch.tensor([1, 1, 0, 1], dtype=torch.uint8)
    path = input_trace(tmp_path / "t.safetensors", x, top_k=1, extra={"tokens.mask": mask})
    row = replay(ckpt, path, device="cpu").to_dict()["layers"][0]
    assert row["tokens"] == row["compared"] == 2 and row["excluded_nonfinite"] == 1
    assert row["stats"]["load"] == [1, 1] and row["topk_agreement"] == 1.0


def test_device_and_dtype_are_checked() -> None:
    from moediag.replay import resolve_device, resolve_dtype

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None) == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(UsageError):
        resolve_dtype("int8")
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(recorded) -> None:
    for family in FAMILIES:
        ckpt, trace, _ = recorded[family]
        cpu = replay(ckpt, trace, device="cpu").to_dict()
        gpu = replay(ckpt, trace, device="cuda").to_dict()
        assert gpu["summary"]["match"] is True
        for rc, rg in zip(cpu["layers"], gpu["layers"], strict=True):
            assert rc["stats"]["load"] == rg["stats"]["load"]


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_figures_equal_inspect_on_identical_routing(family: str, recorded) -> None:
    """One routing path: on the same logits and choices, replay's per-layer figures (margins included) are
    inspect's, for softmax (+/- renormalisation), sigmoid with bias and groups, and top-k then softmax."""
    from moediag.analysis import analyze_trace

    ckpt, trace, _ = recorded[family]
    doc = replay(ckpt, trace, device="cpu", chunk_tokens=80).to_dict()
    assert doc["summary"]["match"] is True
    inspected = analyze_trace(trace)
    for row in doc["layers"]:
        want = inspected.layer(row["layer"])
        assert want["source"] == "logits"
        for key, value in row["stats"].items():
            if isinstance(value, float):
                assert value == pytest.approx(want[key], rel=1e-4, abs=1e-6), (family, row["layer"], key)
            else:
                assert value == want[key], (family, row["layer"], key)
        assert row["stats"]["margin_mean"] is not None and row["stats"]["margin_mean"] >= 0
