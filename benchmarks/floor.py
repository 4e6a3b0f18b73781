"""The floor: only the unavoidable work on the same tensors (read each chunk of each layer's logits,
top-k, bincount), with the same chunking and reader as moediag.
Usage: python benchmarks/floor.py TRACE
"""

from __future__ import annotations

import sys
import time

import torch

from moediag.analysis.memory import tune_allocator
from moediag.trace import open_trace


def main() -> None:
    tune_allocator()  # the same allocator settings as the moediag CLI, so only the work differs
    trace = open_trace(sys.argv[1])
    t0 = time.perf_counter()
    counts = {}
    for chunk in trace.iter_chunks():
        for layer, info in trace.layers.items():
            logits = chunk.layer_tensor(layer, "router_logits")
            assert logits is not None
            ids = logits.float().topk(info.spec.top_k or 1, dim=-1).indices
            c = torch.bincount(ids.reshape(-1), minlength=info.num_experts)
            counts[layer] = counts.get(layer, 0) + c
    dt = time.perf_counter() - t0
    print(
        f"floor: {trace.num_tokens} tokens x {len(trace.layers)} layers in {dt:.2f} s "
        f"({trace.num_tokens / dt:,.0f} tokens/s)"
    )


if __name__ == "__main__":
    main()
