"""1 worker vs N local worker processes on the benchmark trace: wall time, speed-up, per-unit overhead.

Usage: python benchmarks/bench_parallel.py [TRACE] [--shards K] [--workers 1,2,0] [--dask 2] [--json OUT]

``--workers``: 1 = one unit at a time in this process, N > 1 = N worker processes, 0 = the default
(units side by side in threads of this process).

TRACE defaults to benchmarks/data/trace-2g (made by benchmarks/make_trace.py; a 256k-token one is made
when it is absent). ``--shards K`` analyses only the first K shards (through a folder of symlinks).
Every run must give the same ``to_dict(detail=True)`` (timestamps aside) as the first run; the script
fails otherwise. ``--dask N`` adds a run on a ``dask.distributed.LocalCluster`` of N single-threaded worker
processes (cluster start-up timed separately). Prints the load average beside the figures: on a shared
machine they are upper bounds.
See docs/benchmarks.md (## parallel) and docs/scale.md (sizing).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from moediag.analysis import analyze_trace, trace_stats
from moediag.analysis.runners import LocalRunner
from moediag.analysis.units import compact, compute_unit, pinned_threads, plan_units
from moediag.trace import open_trace


def subset(trace_dir: Path, k: int | None, tmp: Path) -> Path:
    if k is None or not trace_dir.is_dir():
        return trace_dir
    out = tmp / f"{trace_dir.name}-{k}"
    out.mkdir()
    for p in sorted(trace_dir.glob("*.safetensors"))[:k]:
        (out / p.name).symlink_to(p.resolve())
    return out


def scrubbed(doc: dict) -> str:
    doc["meta"].pop("created", None)
    doc["meta"].pop("path", None)
    return json.dumps(doc, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", default="benchmarks/data/trace-2g")
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--workers", default="1,2,0")
    ap.add_argument("--dask", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    src = Path(args.trace)
    if not src.exists():
        subprocess.run(
            [sys.executable, "benchmarks/make_trace.py", str(src), "--tokens", str(1 << 18)], check=True
        )
    out: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = subset(src, args.shards, Path(tmp))
        trace = open_trace(path)
        units = plan_units(collect=trace_stats, trace=trace)
        nbytes = sum(s.path.stat().st_size for s in trace.shards)
        out |= {"trace": str(src), "shards": len(trace.shards), "tokens": trace.num_tokens, "bytes": nbytes}
        out["units"] = len(units)
        print(
            f"{path}: {len(trace.shards)} shards, {trace.num_tokens} tokens, {nbytes / 1e9:.2f} GB, "
            f"{len(units)} units; load average {os.getloadavg()}",
            flush=True,
        )

        # overhead per unit: state size, pickle round trip, merge into the running total. The state is
        # the same size whatever the unit's length (counts + the open sequence runs at its two ends), so
        # two small units of the same trace measure it cheaply.
        small = plan_units(collect=trace_stats, trace=trace, chunk_tokens=8192, unit_tokens=8192)
        t = time.perf_counter()
        with pinned_threads(1):
            a = compact(compute_unit(small[1]))
            t_unit = time.perf_counter() - t
            b = compact(compute_unit(small[2]))
        t = time.perf_counter()
        blob = pickle.dumps(a)
        a = pickle.loads(blob)
        t_pickle = time.perf_counter() - t
        t = time.perf_counter()
        a.merge(b)
        t_merge = time.perf_counter() - t
        # process start-up: spawn N workers that import torch and moediag
        t = time.perf_counter()
        runner = LocalRunner(2)
        pool = runner._executor()
        list(pool.map(abs, range(4)))
        runner.close()
        t_spawn = time.perf_counter() - t
        out["overhead"] = {
            "small_unit_seconds": t_unit,
            "small_unit_tokens": small[1].tokens,
            "state_bytes": len(blob),
            "pickle_roundtrip_seconds": t_pickle,
            "merge_seconds": t_merge,
            "spawn_2_workers_seconds": t_spawn,
            "loadavg": os.getloadavg(),
        }
        print("overhead:", json.dumps(out["overhead"]), flush=True)

        reference = None
        # 1 = one unit at a time in this process; N > 1 = N worker processes; 0 = the default (units side
        # by side in threads of this process, as many as torch has threads, at most 8)
        for w in [int(x) for x in args.workers.split(",")]:
            load0 = os.getloadavg()
            t = time.perf_counter()
            doc = analyze_trace(path, workers=w or None).to_dict(detail=True)
            wall = time.perf_counter() - t
            text = scrubbed(doc)
            same = reference is None or text == reference
            reference = reference or text
            run = {
                "workers": w,
                "seconds": wall,
                "identical": same,
                "load_before": load0,
                "load_after": os.getloadavg(),
            }
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
            if not same:
                sys.exit(f"workers={w}: result differs from workers=1")
        if args.dask:
            import dask
            from distributed import LocalCluster

            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which turns off glibc's adaptive
            # mmap threshold: every large tensor is then a fresh mmap (page faults), ~1.5x slower units.
            # docs/scale.md recommends these two settings for workers.
            dask.config.set(
                {
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1 << 30,
                    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 1 << 25,
                }
            )

            t = time.perf_counter()
            cluster = LocalCluster(
                n_workers=args.dask, processes=True, threads_per_worker=1, dashboard_address=":0"
            )
            t_start = time.perf_counter() - t
            load0 = os.getloadavg()
            t = time.perf_counter()
            doc = analyze_trace(path, scheduler=cluster.scheduler_address).to_dict(detail=True)
            wall = time.perf_counter() - t
            cluster.close()
            same = reference is None or scrubbed(doc) == reference
            run = {
                "dask_workers": args.dask,
                "seconds": wall,
                "cluster_start_seconds": t_start,
                "identical": same,
                "load_before": load0,
                "load_after": os.getloadavg(),
            }
            out["runs"].append(run)
            print(json.dumps(run), flush=True)
            if not same:
                sys.exit("dask: result differs from workers=1")
    base = out["runs"][0]["seconds"]
    for run in out["runs"]:
        run["speedup"] = base / run["seconds"]
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
