"""Checkpoint inspection at real scale: structure of the full DeepSeek-V3 and GPT-OSS-120B layouts (sparse
files: real headers, no disk), dequantisation speed per core, and the weights pass over one real-size
DeepSeek-V3 MoE layer (256 FP8 experts, 11.3 GB of random data). Figures go to docs/benchmarks.md.

Usage: python benchmarks/checkpoint_bench.py [WORKDIR] [--rounds N] [--skip-layer]
       (default benchmarks/data; makes the data if absent: the layer takes ~5 minutes and 11.3 GB of disk)

Every measurement runs in a fresh process (peak RSS is that work's alone) and is repeated; the median
and the range are printed, since the development machine is shared and single runs scatter. CPU seconds
(user + system of the process) are printed beside wall seconds: on a machine loaded by other jobs they
are the closer measure of the work itself.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.checkpoint.scale_layouts import deepseek_v3, deepseek_v3_moe_layer, gpt_oss_120b  # noqa: E402


def child(mode: str, path: str, arg: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from moediag.checkpoint import analyze_checkpoint, check_weights

    out: dict[str, object] = {}
    if mode == "structure":
        t0, c0 = time.perf_counter(), time.process_time()
        a = analyze_checkpoint(path, weights=False)
        out.update(
            seconds=time.perf_counter() - t0, cpu_s=time.process_time() - c0, tensors=len(a.inventory.tensors)
        )
    elif mode == "dequant":
        from moediag.checkpoint.dequant import dequant_fp8, dequant_mxfp4

        torch.set_num_threads(1)  # per core
        g = torch.Generator().manual_seed(0)
        if arg == "fp8":  # one DeepSeek-V3 expert projection [2048, 7168] with its [16, 56] scales
            w = torch.randint(0, 256, (2048, 7168), dtype=torch.uint8, generator=g)
            s, dest = torch.rand(16, 56, generator=g), torch.empty(2048, 7168)
            stored = w.numel()

            def f() -> None:
                dequant_fp8(w, s, (128, 128), out=dest)
        else:  # one GPT-OSS-120B expert's gate_up [5760, 90, 16] blocks and [5760, 90] scales
            b = torch.randint(0, 256, (5760, 90, 16), dtype=torch.uint8, generator=g)
            sc = torch.randint(110, 140, (5760, 90), dtype=torch.uint8, generator=g)
            dest, stored = torch.empty(5760, 2880), b.numel() + sc.numel()

            def f() -> None:
                dequant_mxfp4(b, sc, out=dest)

        f()
        times, cpu = [], []
        for _ in range(9):
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out.update(
            seconds=statistics.median(times),
            gbps=stored / statistics.median(times) / 1e9,
            gbps_cpu=stored / statistics.median(cpu) / 1e9,  # per second of CPU: what a free core does
        )
    else:  # weights
        a = analyze_checkpoint(path, weights=False, sample=float(arg))
        est = a.weights_estimate()
        t0, c0 = time.perf_counter(), time.process_time()
        check_weights(a)
        out.update(
            seconds=time.perf_counter() - t0,
            cpu_s=time.process_time() - c0,
            estimate_s=est[1],
            bytes=est[0],
            screen=a.layers[0].screen,
            pairs=len(a.layers[0].redundant_pairs or []),
        )
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(mode: str, path: Path | str, arg: str = "", rounds: int = 3) -> list[dict]:
    results = []
    for _ in range(rounds):
        r = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(path), arg],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return results


def _med(rs: list[dict], key: str) -> str:
    v = sorted(float(r[key]) for r in rs)
    return f"{statistics.median(v):.2f} (range {v[0]:.2f}-{v[-1]:.2f}, {len(v)} rounds)"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
    work = Path(args[0] if args else "benchmarks/data")
    for name, make in (("ds3", deepseek_v3), ("gptoss120", gpt_oss_120b)):
        if not (work / name / "config.json").exists():
            print(f"{name}: {make(work / name)}")
        rs = run("structure", work / name, rounds=rounds)
        print(
            f"structure {name}: {rs[0]['tensors']:,} tensors: wall {_med(rs, 'seconds')} s, "
            f"CPU {_med(rs, 'cpu_s')} s, "
            f"peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB"
        )
    for kind in ("fp8", "mxfp4"):
        rs = run("dequant", "-", kind, rounds=rounds)
        print(
            f"dequant {kind}, one thread: {_med(rs, 'gbps')} GB/s of stored bytes per wall second, "
            f"{_med(rs, 'gbps_cpu')} per CPU second"
        )
    if "--skip-layer" in sys.argv:
        return
    layer = work / "ds3-layer256"
    if not (layer / "config.json").exists():
        print(f"layer: {deepseek_v3_moe_layer(layer)}")
    rs = run("weights", layer, str(1 / 32), rounds=rounds)
    print(
        f"weights pass, one DeepSeek-V3 MoE layer (256 FP8 experts, 11.3 GB), sample 1/32: "
        f"wall {_med(rs, 'seconds')} s, CPU {_med(rs, 'cpu_s')} s (estimate {rs[0]['estimate_s']:.1f} s), "
        f"read {rs[0]['bytes'] / 1e9:.2f} GB, "
        f"peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB; x58 layers = "
        f"{statistics.median(float(r['seconds']) for r in rs) * 58 / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
