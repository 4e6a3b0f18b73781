"""Checkpoint inspection at real scale: structure of the full DeepSeek-V3 and GPT-OSS-120B layouts (sparse
files: real headers, no disk), dequantisation speed per core, and the weights pass over one real-size
DeepSeek-V3 MoE layer (256 FP8 experts, 11.3 GB of random data). Figures go to docs/benchmarks.md.

    python benchmarks/checkpoint_bench.py                        # structure, fp8, mxfp4 (no big layer)
    python benchmarks/checkpoint_bench.py --only mxfp4 --only fp8 --threads 1,2 --decoder compiled,torch
    python benchmarks/checkpoint_bench.py --only layer           # writes 11.3 GB, removes it afterwards

The structure layouts are sparse files (about 20 MB of real disk) made under WORKDIR when absent and
kept. The layer is opt-in (``--only layer``): it writes 11.3 GB for real (about 5 minutes), says so
before it starts, and is deleted when the run ends unless ``--keep-layer`` (a layer folder that was
already there is never deleted).

Every measurement runs in a fresh process (peak RSS is that work's alone) and is repeated; the median
and the range are printed, since the development machine is shared and single runs scatter. CPU
seconds (user + system of the process) are printed beside wall seconds: on a machine loaded by other
jobs they are the closer measure of the work itself. The load average is printed with each part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.checkpoint.scale_layouts import deepseek_v3, deepseek_v3_moe_layer, gpt_oss_120b  # noqa: E402

PARTS = ("structure", "fp8", "mxfp4", "layer")
DEFAULT_PARTS = ("structure", "fp8", "mxfp4")
LAYER_GB = 11.3

#: what each dequantisation case decodes (one expert's tensors at real size), for the printed line
CASES = {
    "fp8": "FP8 E4M3, one DeepSeek-V3 expert projection [2048, 7168] with [16, 56] scales, NaN-free codes",
    "fp8-random": "FP8 E4M3, the same with uniformly random bytes (1 in 128 a NaN code: the table route)",
    "mxfp4": "MXFP4, one GPT-OSS-120B expert's gate_up blocks [5760, 90, 16] and scales [5760, 90]",
}


def _dequant_case(kind: str):  # type: ignore[no-untyped-def]
    """(function to time, stored bytes it decodes) for one case of :data:`CASES`."""
    import torch

    from moediag.checkpoint.dequant import dequant_fp8, dequant_mxfp4

    g = torch.Generator().manual_seed(0)
    if kind.startswith("fp8"):
        w = torch.randint(0, 256, (2048, 7168), dtype=torch.uint8, generator=g)
        if kind == "fp8":  # as real weights: no NaN code (S.1111.111)
            w[(w & 0x7F) == 0x7F] -= 1
        s, dest = torch.rand(16, 56, generator=g), torch.empty(2048, 7168)

        def f() -> None:
            dequant_fp8(w, s, (128, 128), out=dest)

        return f, w.numel()
    b = torch.randint(0, 256, (5760, 90, 16), dtype=torch.uint8, generator=g)
    sc = torch.randint(110, 140, (5760, 90), dtype=torch.uint8, generator=g)
    out = torch.empty(5760, 2880)

    def f() -> None:
        dequant_mxfp4(b, sc, out=out)

    return f, b.numel() + sc.numel()


def _use_decoder(route: str) -> None:
    """Decode with ``route`` in this process: the compiled decoder, or the torch ops (compiled one off)."""
    from moediag.checkpoint import dequant

    if route == "torch":
        dequant._compiled = None
    elif dequant.decoder() != "compiled":
        raise SystemExit("the compiled decoder is not built (pip install -e . with a C compiler)")


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
        kind, threads, route = arg.split(":")
        torch.set_num_threads(int(threads))
        _use_decoder(route)
        f, stored = _dequant_case(kind)
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
        sample, route = arg.split(":")
        _use_decoder(route)
        a = analyze_checkpoint(path, weights=False, sample=float(sample))
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


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def structure(work: Path, rounds: int) -> None:
    for name, make in (("ds3", deepseek_v3), ("gptoss120", gpt_oss_120b)):
        if not (work / name / "config.json").exists():
            print(f"{name}: made {make(work / name)} (sparse files)")
        rs = run("structure", work / name, rounds=rounds)
        print(
            f"structure {name}: {rs[0]['tensors']:,} tensors: wall {_med(rs, 'seconds')} s, "
            f"CPU {_med(rs, 'cpu_s')} s, peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB ({_load()})"
        )


def dequant(kinds: list[str], threads: list[int], routes: list[str], rounds: int) -> None:
    for kind in kinds:
        for route in routes:
            # the compiled decoder runs in the calling thread: torch's thread count does not change it
            for n in threads if route == "torch" else [1]:
                rs = run("dequant", "-", f"{kind}:{n}:{route}", rounds=rounds)
                print(
                    f"dequant {kind}, {route} decoder, {n} thread{'s' if n > 1 else ''}: {_med(rs, 'gbps')} "
                    f"GB/s of stored bytes per wall second, {_med(rs, 'gbps_cpu')} per CPU second "
                    f"({_load()})\n    {CASES[kind]}"
                )


def layer(work: Path, rounds: int, keep: bool, routes: list[str]) -> None:
    folder = work / "ds3-layer256"
    made = not (folder / "config.json").exists()
    if made:
        free = shutil.disk_usage(work).free / 1e9
        print(
            f"layer: writing {LAYER_GB} GB of random FP8 experts to {folder} (about 5 minutes; {free:.0f} GB "
            f"free); {'kept' if keep else 'deleted'} afterwards",
            flush=True,
        )
        if free < LAYER_GB + 2:
            raise SystemExit(f"layer: not enough disk under {work} ({free:.1f} GB free)")
    try:
        if made:
            print(f"layer: {deepseek_v3_moe_layer(folder)}", flush=True)
        for route in routes:
            _layer_line(run("weights", folder, f"{1 / 32}:{route}", rounds=rounds), route)
    finally:
        if made and not keep:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"layer: deleted {folder}")


def _layer_line(rs: list[dict], route: str) -> None:
    print(
        f"weights pass, one DeepSeek-V3 MoE layer (256 FP8 experts, {LAYER_GB} GB), sample 1/32, {route} "
        "decoder: "
        f"wall {_med(rs, 'seconds')} s, CPU {_med(rs, 'cpu_s')} s "
        f"(estimate {rs[0]['estimate_s']:.1f} s), "
        f"read {rs[0]['bytes'] / 1e9:.2f} GB, peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB; "
        f"x58 layers = {statistics.median(float(r['seconds']) for r in rs) * 58 / 60:.1f} min ({_load()})",
        flush=True,
    )


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Checkpoint benchmarks at real scale (figures for docs/benchmarks.md).",
        epilog="Parts: structure (sparse DeepSeek-V3 and GPT-OSS-120B layouts, kept under WORKDIR), fp8 and "
        "mxfp4 (dequantisation of one expert, per core), layer (the weights pass over one real-size "
        f"DeepSeek-V3 MoE layer: writes {LAYER_GB} GB, opt-in).",
    )
    p.add_argument(
        "workdir",
        nargs="?",
        default="benchmarks/data",
        type=Path,
        metavar="WORKDIR",
        help="where the generated checkpoints live (default: benchmarks/data)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        metavar="PART",
        help=f"run this part ({', '.join(PARTS)}); repeat for several. Default: {', '.join(DEFAULT_PARTS)}",
    )
    p.add_argument("--rounds", type=int, default=3, metavar="N", help="fresh processes per measurement (3)")
    p.add_argument(
        "--threads",
        default="1,2",
        metavar="N,N",
        help="torch threads for the dequantisation parts, comma-separated (default 1,2)",
    )
    p.add_argument(
        "--decoder",
        default="compiled,torch",
        metavar="NAME,NAME",
        help="decoders to time (dequantisation and the layer): compiled (moediag/checkpoint/_decode.c), "
        "torch (default both)",
    )
    p.add_argument(
        "--random-fp8",
        action="store_true",
        help="also time FP8 on uniformly random bytes (NaN codes included)",
    )
    p.add_argument("--keep-layer", action="store_true", help="keep the generated 11.3 GB layer")
    return p.parse_args(argv)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
        return
    args = parse(sys.argv[1:])
    parts = args.only or list(DEFAULT_PARTS)
    threads = [int(x) for x in args.threads.split(",") if x]
    if "structure" in parts:
        structure(args.workdir, args.rounds)
    kinds = [k for k in ("fp8", "mxfp4") if k in parts]
    if "fp8" in parts and args.random_fp8:
        kinds.insert(1, "fp8-random")
    routes = [r for r in args.decoder.split(",") if r]
    if kinds:
        dequant(kinds, threads, routes, args.rounds)
    if "layer" in parts:
        layer(args.workdir, args.rounds, args.keep_layer, routes)


if __name__ == "__main__":
    main()
