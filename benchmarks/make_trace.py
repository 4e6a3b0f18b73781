"""Generate a large synthetic benchmark trace (default: 16 layers x 64 experts x 1,048,576 tokens, bf16
logits, about 2.1 GB in 8 shards), written shard by shard so generation memory stays bounded.

Usage: python benchmarks/make_trace.py [OUT_DIR] [--tokens N] [--layers L] [--experts E]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from moediag.trace import TraceWriter, build_metadata


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="benchmarks/data/trace-2g")
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--shard-tokens", type=int, default=1 << 17)
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    meta = build_metadata(
        num_experts=args.experts, top_k=args.top_k, score_function="softmax", model="benchmark-synthetic"
    )
    skew = [torch.randn(args.experts, generator=g) * 0.5 for _ in range(args.layers)]
    with TraceWriter(Path(args.out), meta, shard_tokens=args.shard_tokens) as writer:
        for start in range(0, args.tokens, args.shard_tokens):
            n = min(args.shard_tokens, args.tokens - start)
            idx = torch.arange(start, start + n)
            batch = {
                f"layers.{layer}.router_logits": (
                    torch.randn(n, args.experts, generator=g) + skew[layer]
                ).bfloat16()
                for layer in range(args.layers)
            }
            batch["tokens.sequence_ids"] = (idx // args.seq_len).to(torch.int32)
            batch["tokens.positions"] = (idx % args.seq_len).to(torch.int32)
            writer.add(batch)
            writer.flush()
    print(f"wrote {args.out}: {writer.bytes_written / 1e9:.2f} GB, {writer.tokens_written} tokens")


if __name__ == "__main__":
    main()
