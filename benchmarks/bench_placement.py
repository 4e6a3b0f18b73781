"""Placement quality against DeepSeek's EPLB: balancedness of moediag's placements vs the baseline.

The baseline is EPLB's published ``rebalance_experts`` (deepseek-ai/EPLB), rewritten in tests/replay/_eplb.py:
its global policy against ``placement.balanced``, its hierarchical policy against
``placement.hierarchical``, on the same loads and sizes. Cases:

* seeded skewed load vectors: E in {8, 64, 256}, ranks N in {4, 8, 32, 64}, replicas R in {0, E/8, E/4}
  (sizes where E + R is a multiple of N), without nodes (global) and with 2 or 4 nodes of 8 expert groups
  (hierarchical); ``--vectors`` loads per size, drawn from four skews (power of a uniform, log-normal,
  Zipf, one or two hot experts over a flat floor);
* the sample traces' loads (sample_traces/*.safetensors, every layer) at N in {2, 4, 8} and R in
  {0, E/4, E/2, E}.

Prints per group the share of cases where moediag is better / equal / worse than EPLB (equal: within
1e-12), the mean balancedness gain, and the CPU time per layer of both at each size (process time: one
thread, and a shared machine inflates it less than wall time).

Run:  python benchmarks/bench_placement.py                  # ~1,400 cases, a few minutes on 2 cores
      python benchmarks/bench_placement.py --vectors 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moediag.replay import balanced, hierarchical, rank_loads  # noqa: E402
from moediag.stats.imbalance import balancedness  # noqa: E402
from tests.replay._eplb import eplb_ranks  # noqa: E402

TOL = 1e-12


def skewed(seed: int, e: int) -> torch.Tensor:
    """A seeded load vector [E] (token counts), one of four skews chosen by the seed."""
    g = torch.Generator().manual_seed(seed)
    kind = seed % 4
    if kind == 0:  # power of a uniform: a few heavy experts, a long light tail
        w = torch.rand(e, generator=g, dtype=torch.float64) ** (2 + seed % 9)
    elif kind == 1:  # log-normal
        w = torch.exp(torch.randn(e, generator=g, dtype=torch.float64) * (0.5 + (seed % 5) * 0.4))
    elif kind == 2:  # Zipf over a random order
        w = 1.0 / torch.arange(1, e + 1, dtype=torch.float64) ** (0.6 + (seed % 6) * 0.2)
        w = w[torch.randperm(e, generator=g)]
    else:  # one or two hot experts over a flat noisy floor
        w = 1 + torch.rand(e, generator=g, dtype=torch.float64)
        hot = torch.randperm(e, generator=g)[: 1 + seed % 2]
        w[hot] *= 5 + seed % 40
    return (w / w.sum() * 100_000 * e).round()


def compare(ours: list[list[int]], base: list[list[int]], loads: torch.Tensor) -> tuple[float, float]:
    return (
        balancedness(rank_loads(loads, ours)) or 0.0,
        balancedness(rank_loads(loads, base)) or 0.0,
    )


def sample_loads() -> dict[str, list[torch.Tensor]]:
    from moediag.analysis import analyze_trace

    out: dict[str, list[torch.Tensor]] = {}
    for path in sorted((ROOT / "sample_traces").glob("*.safetensors")):
        doc = analyze_trace(path).to_dict()
        out[path.stem] = [torch.tensor(x["load"], dtype=torch.float64) for x in doc["layers"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=20, help="seeded load vectors per size (default 20)")
    ap.add_argument("--json", type=Path, help="write every case and the summary here")
    args = ap.parse_args()

    cases: list[dict[str, object]] = []
    timing: dict[tuple[str, int, int, int], list[tuple[float, float]]] = defaultdict(list)

    def run(group: str, name: str, loads: torch.Tensor, n: int, r: int, nodes: int | None) -> None:
        e = loads.numel()
        t0 = time.process_time()
        if nodes is None:
            ours = balanced(loads, n, r)
        else:
            ours = hierarchical(loads, n, r, num_groups=8, num_nodes=nodes)
        t1 = time.process_time()
        base = eplb_ranks(loads, n, r, num_groups=8 if nodes else 1, num_nodes=nodes or 1)
        t2 = time.process_time()
        a, b = compare(ours, base, loads)
        timing[("hierarchical" if nodes else "global", e, n, r)].append((t1 - t0, t2 - t1))
        verdict = "better" if a > b + TOL else ("worse" if a < b - TOL else "equal")
        cases.append(
            {
                "group": group,
                "case": name,
                "experts": e,
                "ranks": n,
                "replicas": r,
                "nodes": nodes,
                "moediag": a,
                "eplb": b,
                "verdict": verdict,
            }
        )

    samples = sample_loads()
    seed = 0
    for e in (8, 64, 256):
        for n in (4, 8, 32, 64):
            for r in sorted({0, e // 8, e // 4}):
                if (e + r) % n:
                    continue
                for nodes in (None, 2, 4):
                    if nodes is not None and (r % nodes or n % nodes or e % 8):
                        continue
                    for _ in range(args.vectors):
                        seed += 1
                        group = "synthetic, hierarchical" if nodes else "synthetic, global"
                        run(group, f"seed {seed}", skewed(seed, e), n, r, nodes)
    for trace, layers in samples.items():
        for layer, loads in enumerate(layers):
            e = loads.numel()
            for n in (2, 4, 8):
                for r in sorted({0, e // 4, e // 2, e}):
                    if (e + r) % n == 0:
                        run("sample traces", f"{trace} layer {layer}", loads, n, r, None)

    by_group: dict[str, list[dict[str, object]]] = defaultdict(list)
    for c in cases:
        by_group[str(c["group"])].append(c)
        by_group["all"].append(c)
    summary = {}
    print(f"{'cases':<26}{'n':>6}{'better':>9}{'equal':>9}{'worse':>7}{'mean gain':>11}{'max gain':>10}")
    for group, cs in by_group.items():
        gains = [float(c["moediag"]) - float(c["eplb"]) for c in cs]  # type: ignore[arg-type]
        counts = {v: sum(c["verdict"] == v for c in cs) for v in ("better", "equal", "worse")}
        summary[group] = {
            "cases": len(cs),
            **{f"{v}_share": counts[v] / len(cs) for v in counts},
            "worse": counts["worse"],
            "mean_gain": sum(gains) / len(gains),
            "max_gain": max(gains),
        }
        print(
            f"{group:<26}{len(cs):>6}{counts['better'] / len(cs):>9.3f}{counts['equal'] / len(cs):>9.3f}"
            f"{counts['worse']:>7}{sum(gains) / len(gains):>11.4f}{max(gains):>10.4f}"
        )
    print("\nCPU time per layer, ms (median over vectors; process time, so a loaded machine inflates it less")
    print("than wall time): moediag | EPLB baseline")
    times = {}
    for (policy, e, n, r), ts in sorted(timing.items()):
        if e < 64:
            continue
        ours = sorted(t[0] for t in ts)[len(ts) // 2] * 1e3
        base = sorted(t[1] for t in ts)[len(ts) // 2] * 1e3
        worst = max(t[0] for t in ts) * 1e3
        times[f"{policy} E={e} N={n} R={r}"] = {"moediag_ms": ours, "moediag_max_ms": worst, "eplb_ms": base}
        print(f"  {policy:<13} E={e:<4} N={n:<3} R={r:<3} {ours:8.1f} (max {worst:6.1f}) | {base:8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "times": times, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
