"""`moediag watch`: scrape time of /metrics and ingest rate (tokens/s, dumps/s) for per-token and count dumps.

1. **scrape**: a window of ``--layers`` x ``--experts`` (default 61 x 256, DeepSeek-V3's MoE layers) with
   per-expert load shares on (``--per-expert all``: 15,616 series), served by
   :class:`moediag.live.prometheus.PrometheusMetrics`; the time of ``GET /metrics`` over loopback (median
   and max of ``--scrapes``), and the time to render one window (paid once per window, not per scrape).
2. **ingest, per-token**: SGLang ``per_token`` dumps (``--records`` forward passes of ``--tokens`` tokens,
   top-``--top-k`` over every layer) written to a folder, then one :meth:`Watcher.poll` reads them all:
   tokens/s and dumps/s, including ``torch.load`` and the statistics.
3. **ingest, counts**: SGLang ``stat`` dumps (``logical_count`` ``[--slots, layers, experts]``): dumps/s
   and recorded steps/s.
4. **window**: one :meth:`Watcher.report` (close the window, judge, rules, render the metrics).

Run: python benchmarks/bench_watch.py            (add --json for a machine-readable line)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moediag.live.prometheus import PrometheusMetrics  # noqa: E402
from moediag.watch import Watcher, WatchOptions  # noqa: E402


def _window_records(layers: int, experts: int, seed: int = 0) -> list[dict]:
    from moediag.live import LiveStats
    from moediag.watch.decoders import ids_batch

    g = torch.Generator().manual_seed(seed)
    live = LiveStats()
    for layer in range(layers):
        ids = torch.randint(0, experts, (4096, 8), generator=g)
        live.update(layer, ids_batch(ids, experts), step=1)
    return live.close_window(step=1).records()


def bench_scrape(layers: int, experts: int, scrapes: int) -> dict:
    records = _window_records(layers, experts)
    metrics = PrometheusMetrics(rules=["max_vio", "max_cv", "max_dead", "min_entropy"], per_expert="all")
    t0 = time.perf_counter()
    metrics.log(records, step=1)
    render_window = time.perf_counter() - t0
    server = metrics.serve("127.0.0.1", 0)
    try:
        times = []
        body = b""
        for _ in range(scrapes):
            t = time.perf_counter()
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
                body = r.read()
            times.append(time.perf_counter() - t)
    finally:
        metrics.close()
    return {
        "layers": layers,
        "experts": experts,
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "bytes": len(body),
        "scrape_ms_median": 1000 * statistics.median(times),
        "scrape_ms_max": 1000 * max(times),
        "window_render_ms": 1000 * render_window,
    }


def _write_per_token(
    folder: Path, dumps: int, records: int, tokens: int, layers: int, experts: int, k: int
) -> int:
    g = torch.Generator().manual_seed(1)
    p2l = torch.arange(experts, dtype=torch.int64).repeat(layers, 1)
    total = 0
    for d in range(dumps):
        recs = []
        for r in range(records):
            topk = torch.full((layers, tokens, 8), -1, dtype=torch.int32)
            topk[:, :, :k] = (
                torch.rand(layers, tokens, experts, generator=g).topk(k, dim=-1).indices.to(torch.int32)
            )
            recs.append(
                dict(
                    forward_pass_id=d * records + r,
                    rank=0,
                    input_ids=list(range(tokens)),
                    positions=list(range(tokens)),
                    extend_seq_lens=[tokens],
                    topk_ids_of_layer=topk,
                    global_physical_count=torch.zeros(layers, experts, dtype=torch.int32),
                )
            )
            total += tokens
        torch.save(
            dict(records=recs, last_physical_to_logical_map=p2l),
            folder / f"expert_distribution_recorder_{d}_0.pt",
        )
    return total


def _write_stat(folder: Path, dumps: int, slots: int, layers: int, experts: int) -> int:
    g = torch.Generator().manual_seed(2)
    for d in range(dumps):
        lc = torch.randint(1, 1000, (slots, layers, experts), generator=g, dtype=torch.int32)
        torch.save(
            dict(rank=0, logical_count=lc, average_utilization_rate_over_window=None),
            folder / f"expert_distribution_recorder_{d}.pt",
        )
    return dumps * slots


def bench_ingest(kind: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dumps"
        folder.mkdir()
        if kind == "per_token":
            units = _write_per_token(
                folder, args.dumps, args.records, args.tokens, args.layers, args.experts, args.top_k
            )
        else:
            units = _write_stat(folder, args.dumps, args.slots, args.layers, args.experts)
        opts = WatchOptions("sglang", settle=0, window_seconds=None)
        w = Watcher([folder], opts, log=lambda m: None)
        w.sinks = [PrometheusMetrics(rules=w.rules(), per_expert="all")]
        t = time.perf_counter()
        w.poll()
        ingest = time.perf_counter() - t
        t = time.perf_counter()
        w.report()
        window = time.perf_counter() - t
        assert w.counters["files"] == args.dumps, w.counters
    out = {
        "kind": kind,
        "dumps": args.dumps,
        "seconds": ingest,
        "dumps_per_s": args.dumps / ingest,
        "window_report_ms": 1000 * window,
    }
    if kind == "per_token":
        out.update(tokens=units, tokens_per_s=units / ingest, layers=args.layers, top_k=args.top_k)
    else:
        out.update(steps=units, steps_per_s=units / ingest, layers=args.layers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=61)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--dumps", type=int, default=8)
    ap.add_argument("--records", type=int, default=4, help="forward passes per per_token dump")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per forward pass")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--slots", type=int, default=100, help="buffer slots per stat dump")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (moediag watch's default is 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "scrape": bench_scrape(args.layers, args.experts, args.scrapes),
        "ingest_per_token": bench_ingest("per_token", args),
        "ingest_counts": bench_ingest("stat", args),
    }
    if args.json:
        print(json.dumps(results))
        return
    s = results["scrape"]
    print(
        f"scrape {s['layers']} layers x {s['experts']} experts ({s['series']} series, "
        f"{s['bytes'] / 1e6:.2f} MB): median "
        f"{s['scrape_ms_median']:.2f} ms, max {s['scrape_ms_max']:.2f} ms; "
        f"window render {s['window_render_ms']:.0f} ms"
    )
    p = results["ingest_per_token"]
    print(
        f"per-token dumps: {p['tokens']} tokens x {p['layers']} layers (top-{p['top_k']}) in "
        f"{p['seconds']:.2f} s: {p['tokens_per_s']:,.0f} tokens/s, {p['dumps_per_s']:.2f} dumps/s; "
        f"window {p['window_report_ms']:.0f} ms"
    )
    c = results["ingest_counts"]
    print(
        f"count dumps: {c['dumps']} dumps of {c['steps'] // c['dumps']} steps x {c['layers']} layers in "
        f"{c['seconds']:.2f} s: {c['dumps_per_s']:.1f} dumps/s, {c['steps_per_s']:,.0f} steps/s; "
        f"window {c['window_report_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
