"""Training-step overhead of ``moediag.Monitor`` on a Mixtral-style model (CPU, or CUDA with --device).

A tiny-vocabulary Mixtral (transformers' own ``MixtralForCausalLM``, random weights) trains with SGD on
random tokens; a step is forward + backward + optimizer step. Each round times ``--steps`` steps of every
variant, the variants interleaved so that drift of the machine hits them alike; the figure is the median
over ``--rounds`` rounds of the per-step time.

Variants: ``off`` (no monitor), ``every=10`` (the goal: <= 3% overhead), ``every=1`` (a report at every
step: the cost of a report), and ``every=10+flight`` (a 16-step flight recorder as well). The per-step
cost of a non-report step is ``(t(every=10) - t(off))`` minus a tenth of a report, roughly: the table
prints the raw medians, so read it as "what a loop pays".

Run:   python benchmarks/bench_monitor.py                      (CPU; the step is >= 100 ms)
       python benchmarks/bench_monitor.py --device cuda --hidden 1024 --layers 8 --experts 64 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import moediag  # noqa: E402


def build(args: argparse.Namespace) -> Any:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=args.seq,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
    )
    return transformers.MixtralForCausalLM(cfg).to(args.device).train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_steps(model: Any, opt: Any, batches: list[dict[str, torch.Tensor]], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return (time.perf_counter() - start) / len(batches)


def hook_cost(args: argparse.Namespace, repeats: int = 50) -> dict[str, float]:
    """The monitor's own work per router call, isolated from the model: routing the logits on the
    device and adding them to the device-side sums (what a non-report step pays per MoE layer), and one
    report's host side (copy, figures, judgement, alerts). Median of ``repeats`` calls, in ms."""
    from moediag.checks import CheckConfig
    from moediag.live import LiveStats, TemporalJudge, evaluate
    from moediag.monitor.device import DeviceStats
    from moediag.record.discover import RoutingInfo
    from moediag.routing import route

    t = args.batch * args.seq
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(t, args.experts, generator=g).to(args.device)
    stats = DeviceStats(
        {i: (args.experts, args.top_k) for i in range(args.layers)}, torch.device(args.device)
    )
    spec = RoutingInfo(
        num_experts=args.experts,
        top_k=args.top_k,
        score_function="softmax",
        norm_topk_prob=True,
        n_group=None,
        topk_group=None,
        group_score=None,
        model_type="mixtral",
        extra={},
        layer_overrides={},
    )
    per_call = []
    for _ in range(repeats):
        _sync(args.device)
        start = time.perf_counter()
        r = route(logits, spec=spec)
        stats.update(0, r, None)
        _sync(args.device)
        per_call.append(time.perf_counter() - start)
    live, judge, config = LiveStats(), TemporalJudge(), CheckConfig()
    per_report = []
    for i in range(max(5, repeats // 10)):
        start = time.perf_counter()
        for layer_stats in stats.to_host().values():
            live.add(layer_stats, i)
        stats.zero()
        report = live.close_window(step=i)
        judge.judge(report)
        evaluate(report, config)
        report.records()
        per_report.append(time.perf_counter() - start)
    call = statistics.median(per_call) * 1e3
    return {
        "router_call_ms": round(call, 3),
        "non_report_step_ms": round(call * args.layers, 3),
        "report_ms": round(statistics.median(per_report) * 1e3, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round (a multiple of 10)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "input_ids": (ids := torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)).to(
                args.device
            ),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=args.device),
            "labels": ids.to(args.device),
        }
        for _ in range(args.steps)
    ]
    variants: dict[str, dict[str, Any] | None] = {
        "off": None,
        "every=10": {"every": 10},
        "every=1": {"every": 1},
        "every=10+flight": {"every": 10, "flight_recorder": 16},
    }
    run_steps(model, opt, batches[:2], args.device)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {k: [] for k in variants}
    flight_dir = tempfile.mkdtemp(prefix="moediag-bench-")  # alerts of the random model write traces
    try:
        for _ in range(args.rounds):
            for name, kwargs in variants.items():
                if kwargs is None:
                    times[name].append(run_steps(model, opt, batches, args.device))
                    continue
                with moediag.Monitor(model, on_alert="ignore", rules={}, flight_dir=flight_dir, **kwargs):
                    times[name].append(run_steps(model, opt, batches, args.device))
    finally:
        shutil.rmtree(flight_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["off"]
    result = {
        "device": args.device,
        "model": {
            "hidden": args.hidden,
            "layers": args.layers,
            "experts": args.experts,
            "top_k": args.top_k,
            "tokens_per_step": args.batch * args.seq,
        },
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": args.steps,
        "median_step_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "overhead_pct": {k: round((v / base - 1) * 100, 2) for k, v in med.items() if k != "off"},
        "per_step_cost_ms": {k: round((v - base) * 1e3, 3) for k, v in med.items() if k != "off"},
        "isolated": hook_cost(args),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    iso = result["isolated"]
    print(
        f"device {args.device}, {torch.get_num_threads()} threads, {args.layers} layers x {args.experts} "
        f"experts top-{args.top_k}, {args.batch * args.seq} tokens/step, median of {args.rounds} rounds "
        f"x {args.steps} steps"
    )
    print(f"{'variant':<18}{'step ms':>10}{'overhead':>10}{'cost/step ms':>14}")
    for k, v in med.items():
        over = "" if k == "off" else f"{(v / base - 1) * 100:+.2f}%"
        cost = "" if k == "off" else f"{(v - base) * 1e3:.3f}"
        print(f"{k:<18}{v * 1e3:>10.2f}{over:>10}{cost:>14}")
    print(
        f"isolated: {iso['router_call_ms']:.3f} ms a router call, {iso['non_report_step_ms']:.3f} ms a "
        f"non-report step ({args.layers} layers), {iso['report_ms']:.3f} ms a report (host side)"
    )


if __name__ == "__main__":
    main()
