"""Inputs and bad input: every unreadable checkpoint is one clear error naming the file."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moediag.checkpoint import analyze_checkpoint, is_checkpoint, open_inventory
from moediag.errors import InvalidInputError, UnsupportedLayoutError, UsageError

from .conftest import Factory


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_not_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"this is not a checkpoint at all, just text")
    with pytest.raises(InvalidInputError) as exc:
        analyze_checkpoint(p)
    assert exc.value.path == str(p) and "not a safetensors file" in exc.value.message


def test_truncated_shard(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral").path, tmp_path / "trunc")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(InvalidInputError) as exc:
        analyze_checkpoint(folder, weights=False)
    assert exc.value.path == str(f) and "truncated" in exc.value.message


def test_missing_shard_named_in_index(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral:sharded").path, tmp_path / "missing")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(InvalidInputError) as exc:
        analyze_checkpoint(folder, weights=False)
    assert exc.value.path == str(folder / "model.safetensors.index.json")
    assert shard.name in exc.value.message and "missing" in exc.value.message


def test_index_names_a_tensor_the_shard_lacks(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral:sharded").path, tmp_path / "badindex")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(data["weight_map"].values())[0]
    data["weight_map"]["model.layers.9.mlp.gate.weight"] = first
    index.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError) as exc:
        analyze_checkpoint(folder, weights=False)
    assert exc.value.path == str(folder / first) and "model.layers.9.mlp.gate.weight" in exc.value.message


def test_index_that_is_not_json(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral:sharded").path, tmp_path / "badjson")
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="index is not valid JSON"):
        analyze_checkpoint(folder)


def test_config_that_cannot_be_parsed(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral").path, tmp_path / "badconfig")
    (folder / "config.json").write_text('{"model_type": "mixtral",')
    with pytest.raises(InvalidInputError) as exc:
        analyze_checkpoint(folder)
    assert exc.value.path == str(folder / "config.json") and "config is not valid JSON" in exc.value.message
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="not a JSON object"):
        analyze_checkpoint(folder)


def test_corrupt_header(tmp_path: Path) -> None:
    p = tmp_path / "corrupt.safetensors"
    header = b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}'
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(InvalidInputError, match="malformed safetensors header"):
        analyze_checkpoint(p)


def test_empty_or_unsupported_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no .safetensors files"):
        analyze_checkpoint(empty)
    dist = tmp_path / "torch_dist"
    dist.mkdir()
    (dist / ".metadata").write_bytes(b"x")
    (dist / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(UnsupportedLayoutError, match="torch_dist"):
        analyze_checkpoint(dist)
    binf = tmp_path / "bin"
    binf.mkdir()
    (binf / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedLayoutError, match="pickled"):
        analyze_checkpoint(binf)
    with pytest.raises(InvalidInputError, match="no such file"):
        analyze_checkpoint(tmp_path / "nope")


def test_trace_is_not_a_checkpoint(tmp_path: Path) -> None:
    t = tmp_path / "trace.safetensors"
    save_file({"layers.0.router_logits": torch.zeros(4, 8)}, str(t), metadata={"format": "moediag-trace"})
    assert not is_checkpoint(t)
    with pytest.raises(InvalidInputError, match="moediag trace"):
        analyze_checkpoint(t)
    t2 = tmp_path / "names_only.safetensors"
    save_file({"layers.3.topk_ids": torch.zeros(4, 2, dtype=torch.int64)}, str(t2))
    assert not is_checkpoint(t2)
    folder = tmp_path / "trace_folder"
    folder.mkdir()
    shutil.copy(t, folder / "part-0.safetensors")
    assert not is_checkpoint(folder)
    assert not is_checkpoint(tmp_path / "missing.safetensors")


def test_is_checkpoint(ckpt: Factory, tmp_path: Path) -> None:
    sharded = ckpt("mixtral:sharded").path
    assert is_checkpoint(sharded)
    assert is_checkpoint(sharded / "model.safetensors.index.json")
    assert is_checkpoint(ckpt("mixtral").path / "model.safetensors")
    loose = tmp_path / "loose"
    loose.mkdir()
    save_file({"w.weight": torch.zeros(2, 2)}, str(loose / "weights.safetensors"))
    assert is_checkpoint(loose)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert not is_checkpoint(bad)


def test_unlisted_tensor_is_a_warning(ckpt: Factory, tmp_path: Path) -> None:
    folder = _copy(ckpt("mixtral:sharded").path, tmp_path / "unlisted")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    dropped = "model.norm.weight"
    del data["weight_map"][dropped]
    index.write_text(json.dumps(data))
    inv = open_inventory(folder)
    assert dropped in inv.tensors
    assert any("not listed" in w for w in inv.warnings)


def test_one_shard_of_a_sharded_checkpoint_is_a_warning(ckpt: Factory) -> None:
    """Pointing at one shard reads only its tensors: a partial model, so say so (the folder is whole)."""
    folder = ckpt("mixtral:sharded").path
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1
    inv = open_inventory(shards[0])
    assert any(f"one of {len(shards)} shards" in w and str(folder) in w for w in inv.warnings)
    assert not any("shards" in w for w in open_inventory(folder).warnings)


def test_layer_that_is_not_moe(ckpt: Factory) -> None:
    with pytest.raises(UsageError, match=r"layer 1 is not an MoE layer.*MoE layers: 0, 2"):
        analyze_checkpoint(ckpt("qwen2_moe").path, layer=1)
    with pytest.raises(UsageError, match="threshold"):
        analyze_checkpoint(ckpt("qwen2_moe").path, redundancy_threshold=2.0)


def test_many_shards_many_tensors_headers_only(tmp_path: Path) -> None:
    """Structure-only inspection of 20 shards x ~580 tensors reads headers, not data."""
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    e, layers_per_shard, h, i = 64, 3, 8, 4
    weight_map = {}
    layer = 0
    for s in range(20):
        t: dict[str, torch.Tensor] = {}
        for _ in range(layers_per_shard):
            p = f"model.layers.{layer}.mlp."
            t[p + "gate.weight"] = torch.zeros(e, h)
            for j in range(e):
                for proj, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                    t[p + f"experts.{j}.{proj}.weight"] = torch.zeros(shape)
            layer += 1
        name = f"model-{s:05d}-of-00020.safetensors"
        save_file(t, str(folder / name))
        weight_map.update(dict.fromkeys(t, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3_moe",
                "num_experts": e,
                "num_experts_per_tok": 4,
                "num_hidden_layers": layer,
            }
        )
    )
    assert len(weight_map) > 10_000
    t0 = time.perf_counter()
    s = analyze_checkpoint(folder, weights=False).to_dict()["summary"]
    assert time.perf_counter() - t0 < 10
    assert s["moe_layers"] == 60 and s["num_experts"] == e and s["warnings"] == []
