"""Checkpoint inspection speed: structure-only on many shards / many tensors, and the redundancy pass's
throughput (GB/s of expert weights) and peak memory. Figures go to docs/checkpoints.md ("Performance").

Usage: python benchmarks/checkpoint_bench.py [WORKDIR]   (default benchmarks/data/ckpt; makes data if absent)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def make_many_tensors(folder: Path, shards: int = 64, layers: int = 96, experts: int = 128) -> int:
    """A checkpoint whose headers hold layers * (experts * 3 + 8) tiny tensors, spread over shards."""
    if (folder / "config.json").exists():
        return len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    folder.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    per_shard = -(-layers // shards)
    for s in range(shards):
        t: dict[str, torch.Tensor] = {}
        for L in range(s * per_shard, min(layers, (s + 1) * per_shard)):
            p = f"model.layers.{L}."
            t[p + "mlp.gate.weight"] = torch.zeros(experts, 8)
            for j in range(experts):
                for proj, shape in (("gate_proj", (4, 8)), ("up_proj", (4, 8)), ("down_proj", (8, 4))):
                    t[p + f"mlp.experts.{j}.{proj}.weight"] = torch.zeros(shape)
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[p + f"self_attn.{name}.weight"] = torch.zeros(8, 8)
            t[p + "input_layernorm.weight"] = torch.zeros(8)
            t[p + "post_attention_layernorm.weight"] = torch.zeros(8)
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(t, str(folder / name))
        weight_map.update(dict.fromkeys(t, name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3_moe",
                "num_experts": experts,
                "num_experts_per_tok": 8,
                "num_hidden_layers": layers,
                "hidden_size": 8,
                "moe_intermediate_size": 4,
            }
        )
    )
    return len(weight_map)


def make_big_experts(folder: Path, layers: int = 2, experts: int = 64, h: int = 1024, i: int = 512) -> int:
    """Fused bf16 experts: layers * experts * 3 * h * i * 2 bytes of expert weights."""
    if (folder / "config.json").exists():
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for L in range(layers):
        t = {
            f"model.layers.{L}.mlp.gate.weight": torch.randn(experts, h, generator=g).bfloat16(),
            f"model.layers.{L}.mlp.experts.gate_up_proj": torch.randn(
                experts, 2 * i, h, generator=g
            ).bfloat16(),
            f"model.layers.{L}.mlp.experts.down_proj": torch.randn(experts, h, i, generator=g).bfloat16(),
        }
        save_file(t, str(folder / f"model-{L + 1:05d}-of-{layers:05d}.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3_moe",
                "num_experts": experts,
                "num_experts_per_tok": 8,
                "num_hidden_layers": layers,
                "hidden_size": h,
                "moe_intermediate_size": i,
            }
        )
    )
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def child(mode: str, path: str) -> None:
    """Run one measurement in a fresh process so peak RSS is this work's alone."""
    from moediag.checkpoint import analyze_checkpoint, check_weights

    t0 = time.perf_counter()
    a = analyze_checkpoint(path, weights=False)
    t1 = time.perf_counter()
    out: dict[str, float] = {"structure_s": t1 - t0, "tensors": len(a.inventory.tensors)}
    if mode == "weights":
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t2 = time.perf_counter()
        check_weights(a)
        dt = time.perf_counter() - t2
        out.update(
            weights_s=dt, bytes=a.weight_bytes(), gbps=a.weight_bytes() / dt / 1e9, rss_before_mb=base / 1024
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(mode: str, path: Path) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/data/ckpt")
    n = make_many_tensors(work / "many")
    r = run("structure", work / "many")
    print(
        f"structure only: {int(r['tensors']):,} tensors in 64 shards: {r['structure_s']:.2f} s "
        f"(peak RSS {r['peak_rss_mb']:.0f} MB); index lists {n:,}"
    )
    size = make_big_experts(work / "big")
    r = run("weights", work / "big")
    print(
        f"redundancy pass: {r['bytes'] / 1e9:.2f} GB of bf16 expert weights in {r['weights_s']:.2f} s = "
        f"{r['gbps']:.2f} GB/s; peak RSS {r['peak_rss_mb']:.0f} MB (files {size / 1e9:.2f} GB)"
    )


if __name__ == "__main__":
    main()
