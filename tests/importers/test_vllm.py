from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers import import_routing
from moediag.trace import open_trace
from tests.importers.fixtures import vllm_b64_npy

E, K, NL = 8, 2, 3


def _routed(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([[rng.permutation(E)[:K] for _ in range(NL)] for _ in range(n)]).astype(np.int16)


def test_server_responses_jsonl_value_by_value(tmp_path: Path) -> None:
    reqs = []
    with open(tmp_path / "responses.jsonl", "w") as f:
        for i, (p, c) in enumerate([(4, 3), (2, 2)]):
            prompt = list(range(100 * i, 100 * i + p))
            completion = list(range(50 + i, 50 + i + c))
            arr = _routed(p + c - 1, i)  # the last sampled token is never forwarded
            reqs.append((arr, prompt + completion))
            f.write(
                json.dumps(
                    {
                        "id": f"cmpl-{i}",
                        "object": "text_completion",
                        "choices": [
                            {
                                "index": 0,
                                "text": "...",
                                "prompt_token_ids": prompt,
                                "token_ids": completion,
                                "routed_experts": vllm_b64_npy(arr),
                            }
                        ],
                        "usage": {"prompt_tokens": p, "completion_tokens": c},
                    }
                )
                + "\n"
            )
    with pytest.raises(MissingMetadataError, match="--num-experts"):
        import_routing("vllm", tmp_path / "responses.jsonl", tmp_path / "t")
    res = import_routing(
        "vllm", tmp_path / "responses.jsonl", tmp_path / "t", num_experts=E, layer_ids=[1, 2, 3]
    )
    assert res.per_token and res.layers == [1, 2, 3] and res.num_tokens == 6 + 3
    ch = next(open_trace(tmp_path / "t").iter_chunks())
    for i, layer in enumerate([1, 2, 3]):
        want = np.concatenate([a[:, i, :] for a, _ in reqs])
        assert np.array_equal(ch.layer_tensor(layer, "topk_ids").numpy(), want)
    assert ch.token("input_ids").tolist() == reqs[0][1][:6] + reqs[1][1][:3]
    assert ch.token("sequence_ids").tolist() == [0] * 6 + [1] * 3
    assert ch.token("positions").tolist() == list(range(6)) + list(range(3))


def test_npy_folder_and_dense_placeholder(tmp_path: Path) -> None:
    a = _routed(5, 1)
    a[:, 0, :] = 0  # num_hidden_layers-sized buffer: dense layer 0 never written
    b = _routed(3, 2)
    b[:, 0, :] = 0
    np.save(tmp_path / "req0.npy", a)
    np.save(tmp_path / "req1.npy", b)
    res = import_routing("vllm", tmp_path, tmp_path / "t.safetensors", num_experts=E)
    assert res.layers == [1, 2] and any("dense" in n for n in res.notes)
    ch = next(open_trace(tmp_path / "t.safetensors").iter_chunks())
    assert np.array_equal(ch.layer_tensor(2, "topk_ids").numpy(), np.concatenate([a[:, 2], b[:, 2]]))


def test_pt_list_and_out_of_range(tmp_path: Path) -> None:
    torch.save([torch.from_numpy(_routed(4, 3))], tmp_path / "r.pt")
    with pytest.raises(InvalidInputError, match="out of range"):
        import_routing("vllm", tmp_path / "r.pt", tmp_path / "t", num_experts=4)
    assert not (tmp_path / "t").exists()
    res = import_routing("vllm", tmp_path / "r.pt", tmp_path / "t", num_experts=E)
    assert res.num_tokens == 4


def test_shape_mismatch_between_requests(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", _routed(3, 1), _routed(2, 2)[:, :2, :])
    with pytest.raises(InvalidInputError, match="like the first request"):
        import_routing("vllm", tmp_path / "r.npz", tmp_path / "t", num_experts=E)
