"""Make the synthetic sample traces in sample_traces/ (deterministic; under 5 MB in all).

Three routers over the same tokens, each 8 MoE layers (layer 0 is dense, so layers are 1..8), 16 experts,
top-2, softmax, 16 sequences of 256 tokens from two domains ("prose", "code"):

- healthy:     router weights small and unbiased; load close to uniform.
- imbalanced:  Zipf-like logit biases: alive but uneven (MaxVio around 1-2).
- collapsed:   two experts take most tokens and four never get any (dead), as after router collapse.

Router logits are z = x W^T + b with x the token's hidden state (domain-dependent mean, so experts
specialise a little). ``tokens.correct`` is drawn with a per-expert accuracy, lower on the overloaded
experts of the collapsed router, so per-expert accuracy has something to find.

Usage: python scripts/make_sample_traces.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from moediag.trace import build_metadata, write_trace

E, K, H = 16, 2, 32
LAYERS = range(1, 9)
SEQS, SEQ_LEN = 16, 256
DOMAINS = ["prose", "code"]


def make(kind: str, out: Path) -> Path:
    g = torch.Generator().manual_seed(1234)
    t = SEQS * SEQ_LEN
    seq = torch.arange(t) // SEQ_LEN
    pos = torch.arange(t) % SEQ_LEN
    domain = (seq % 2).to(torch.int64)
    input_ids = torch.randint(0, 512, (t,), generator=g) + 512 * domain
    hidden = torch.randn(t, H, generator=g) + (domain.float().unsqueeze(1) * 2 - 1) * 0.1
    tensors: dict[str, torch.Tensor] = {}
    p_correct = torch.full((t,), 0.6)
    for layer in LAYERS:
        w = torch.randn(E, H, generator=g) * 0.3
        if kind == "healthy":
            w = w * 0.15
            b = torch.zeros(E)
        elif kind == "imbalanced":
            b = torch.log(1.0 / torch.arange(1, E + 1).float()) * 0.9
            b = b[torch.randperm(E, generator=g)]
        else:
            b = torch.zeros(E)
            hot = torch.randperm(E, generator=g)[:6]
            b[hot[:2]] = 3.0
            b[hot[2:]] = -30.0  # dead
        x = hidden + 0.3 * torch.randn(t, H, generator=g)
        logits = x @ w.T + b
        tensors[f"layers.{layer}.router_logits"] = logits.to(torch.bfloat16)
        if layer == 4:
            top1 = logits.argmax(-1)
            acc = 0.55 + 0.3 * torch.rand(E, generator=g)
            if kind == "collapsed":
                acc[hot[:2]] = 0.35
            p_correct = acc[top1]
    correct = torch.rand(t, generator=g) < p_correct
    loss = torch.where(correct, 0.3, 2.5) + 0.2 * torch.rand(t, generator=g)
    mask = torch.ones(t, dtype=torch.bool)
    tensors.update(
        {
            "tokens.input_ids": input_ids.to(torch.int32),
            "tokens.sequence_ids": seq.to(torch.int32),
            "tokens.positions": pos.to(torch.int32),
            "tokens.mask": mask,
            "tokens.correct": correct,
            "tokens.loss": loss.to(torch.float16),
            "tokens.domain": domain.to(torch.int8),
        }
    )
    meta = build_metadata(
        num_experts=E,
        top_k=K,
        score_function="softmax",
        norm_topk_prob=True,
        model=f"synthetic-{kind}",
        domains=DOMAINS,
        extra={"generator": "scripts/make_sample_traces.py"},
    )
    return write_trace(out / f"{kind}.safetensors", tensors, meta)


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "sample_traces"
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("healthy", "imbalanced", "collapsed"):
        path = make(kind, out)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv)
