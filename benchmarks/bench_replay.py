"""Replay throughput (tokens/s) on the CPU or a CUDA GPU, and on CUDA the fraction of the GEMM roofline.

Two measurements:

1. **kernel**: the router GEMM [T, H] x [H, E] plus the routing policy (scores, selection bias, group
   limits, top-k) on the device, in the chosen dtype. Its "roofline" is a bare ``torch.matmul`` of the
   same shape and dtype, timed the same way: ``fraction = t_matmul / t_replay`` (1.0 = replay costs no more
   than the GEMM it cannot avoid). The matmul's achieved TFLOP/s and GB/s are printed too (with E of a few
   hundred the GEMM reads x once and is memory-bound).
2. **end to end**: ``moediag.replay.replay`` over a synthetic trace (router inputs + recorded top-k) and
   checkpoint written to a temporary folder: reading chunks, routing, agreement, and the statistics of
   ``inspect`` on the replayed routing (the statistics run on the CPU).

Run (CPU):   python benchmarks/bench_replay.py
Run (GPU):   python benchmarks/bench_replay.py --device cuda --tokens 262144 --hidden 7168 --experts 256 \
                 --top-k 8 --groups 8 --topk-group 4 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moediag import routing  # noqa: E402
from moediag.replay import DTYPES, replay, resolve_device  # noqa: E402
from moediag.trace import build_metadata, write_trace  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def kernel(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    dt = DTYPES[args.dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.tokens, args.hidden, generator=g).to(device, dt)
    w = (torch.randn(args.experts, args.hidden, generator=g) / args.hidden**0.5).to(device, dt)
    bias = (torch.randn(args.experts, generator=g) * 0.01).to(device) if args.score == "sigmoid" else None
    groups = args.groups if args.groups > 1 else None
    topk_group = args.topk_group if groups else None

    from moediag.trace import RoutingSpec

    spec = RoutingSpec(args.experts, args.top_k, args.score, None, groups, topk_group)

    def route() -> torch.Tensor:
        logits = (x @ w.T).float()
        return routing.choose(logits, spec=spec, bias=bias)

    def gemm() -> torch.Tensor:
        return torch.matmul(x, w.T)

    with torch.inference_mode():
        t_route = _time(route, device, args.repeat)
        t_gemm = _time(gemm, device, args.repeat)
    flops = 2.0 * args.tokens * args.hidden * args.experts
    nbytes = (
        args.tokens * args.hidden + args.experts * args.hidden + args.tokens * args.experts
    ) * x.element_size()
    return {
        "tokens_per_s": args.tokens / t_route,
        "seconds": t_route,
        "matmul_seconds": t_gemm,
        "matmul_tflops": flops / t_gemm / 1e12,
        "matmul_gbps": nbytes / t_gemm / 1e9,
        "fraction_of_gemm_roofline": t_gemm / t_route,
    }


def end_to_end(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    tokens, h, e, k = args.e2e_tokens, args.hidden, args.experts, args.top_k
    g = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = root / "ckpt"
        ckpt.mkdir()
        cfg = {
            "model_type": "mixtral",
            "architectures": ["MixtralForCausalLM"],
            "hidden_size": h,
            "num_hidden_layers": args.layers,
            "num_local_experts": e,
            "num_experts_per_tok": k,
            "intermediate_size": 2,
        }
        tensors: dict[str, torch.Tensor] = {}
        trace: dict[str, torch.Tensor] = {}
        for layer in range(args.layers):
            b = f"model.layers.{layer}.block_sparse_moe"
            w = torch.randn(e, h, generator=g) / h**0.5
            tensors[f"{b}.gate.weight"] = w
            for j in range(e):
                tensors[f"{b}.experts.{j}.w1.weight"] = torch.zeros(2, h)
                tensors[f"{b}.experts.{j}.w3.weight"] = torch.zeros(2, h)
                tensors[f"{b}.experts.{j}.w2.weight"] = torch.zeros(h, 2)
            x = torch.randn(tokens, h, generator=g)
            trace[f"layers.{layer}.router_input"] = x
            trace[f"layers.{layer}.topk_ids"] = (x @ w.T).topk(k, dim=-1).indices.to(torch.int32)
        (ckpt / "config.json").write_text(json.dumps(cfg))
        save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        path = write_trace(
            root / "trace.safetensors",
            trace,
            build_metadata(num_experts=e, top_k=k, score_function="softmax"),
        )
        del trace, tensors
        t = time.perf_counter()
        res = replay(ckpt, path, device=device, dtype=args.dtype, chunk_tokens=args.chunk_tokens)
        seconds = time.perf_counter() - t
        doc = res.to_dict()
    return {
        "tokens_per_s": tokens / seconds,
        "layer_tokens_per_s": tokens * args.layers / seconds,
        "seconds": seconds,
        "topk_agreement": doc["summary"]["topk_agreement"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--tokens", type=int, default=65_536, help="kernel: tokens per GEMM")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--score", default="softmax", choices=routing.SCORE_FUNCTIONS)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--topk-group", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--layers", type=int, default=2, help="end to end: MoE layers in the synthetic trace")
    p.add_argument("--e2e-tokens", type=int, default=16_384, help="end to end: tokens in the synthetic trace")
    p.add_argument("--chunk-tokens", type=int, default=None)
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    device = resolve_device(args.device)
    out: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shape": {"tokens": args.tokens, "hidden": args.hidden, "experts": args.experts, "top_k": args.top_k},
        "dtype": args.dtype,
        "score": args.score,
        "kernel": kernel(args, device),
    }
    if not args.no_e2e:
        out["end_to_end"] = end_to_end(args, device)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    kr = out["kernel"]
    assert isinstance(kr, dict)
    print(
        f"device {out['device']} ({out['threads']} threads), torch {out['torch']}, dtype {args.dtype}, "
        f"score {args.score}, T={args.tokens} H={args.hidden} E={args.experts} k={args.top_k}"
    )
    print(f"kernel     {kr['tokens_per_s']:>14,.0f} tokens/s  ({kr['seconds'] * 1e3:.2f} ms)")
    print(
        f"matmul     {args.tokens / kr['matmul_seconds']:>14,.0f} tokens/s  "
        f"({kr['matmul_seconds'] * 1e3:.2f} ms, "
        f"{kr['matmul_tflops']:.2f} TFLOP/s, {kr['matmul_gbps']:.0f} GB/s)"
    )
    if device.type == "cuda":
        print(f"fraction of the GEMM roofline: {kr['fraction_of_gemm_roofline']:.2f}")
    else:
        print(f"(CPU) matmul / replay time: {kr['fraction_of_gemm_roofline']:.2f}")
    if "end_to_end" in out:
        e2e = out["end_to_end"]
        assert isinstance(e2e, dict)
        print(
            f"end to end {e2e['tokens_per_s']:>14,.0f} tokens/s  "
            f"({args.layers} layers, {args.e2e_tokens} tokens, "
            f"{e2e['seconds']:.2f} s; agreement {e2e['topk_agreement']})"
        )


if __name__ == "__main__":
    main()
