"""Tiny Mixtral-style models and batches for the monitor tests (built from config classes, no downloads)."""

from __future__ import annotations

import os
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 128


def tiny_mixtral(seed: int = 0, *, layers: int = 2, experts: int = 8, top_k: int = 2) -> Any:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        router_aux_loss_coef=0.0,
    )
    model = transformers.MixtralForCausalLM(cfg)
    model.train()
    return model


def batch(seed: int, *, b: int = 4, s: int = 16, pad: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    if pad:
        for row in range(b):
            cut = int(torch.randint(s // 2, s + 1, (1,), generator=g))
            mask[row, cut:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def collapse(model: Any, layer: int, expert: int = 0, strength: float = 50.0) -> Any:
    """Bias one layer's router logits so that ``expert`` is chosen by every token (a collapsed router).

    A forward hook adds ``strength`` to the expert's logit and routes again as Mixtral does (softmax,
    top-k, renormalised weights), so the model runs on the collapsed choice. Register it before a
    monitor: later hooks see this output. Returns the hook handle."""
    gate = model.model.layers[layer].mlp.gate

    def hook(module: Any, args: Any, output: Any) -> Any:
        logits = output[0].clone()
        logits[:, expert] += strength
        probs = torch.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, module.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), idx

    return gate.register_forward_hook(hook)


class Expert(torch.nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class MegatronStyleMoE(torch.nn.Module):
    """A custom block: a ``gate`` linear beside an ``experts`` list, routing with sigmoid top-2."""

    def __init__(self, h: int, e: int, k: int) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(h, e, bias=False)
        self.experts = torch.nn.ModuleList(Expert(h) for _ in range(e))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.gate(x))
        w, idx = scores.topk(self.k, dim=-1)
        out = torch.zeros_like(x)
        for j in range(self.k):
            for e, expert in enumerate(self.experts):
                sel = idx[..., j] == e
                out[sel] += w[..., j][sel].unsqueeze(-1) * expert(x[sel])
        return out


class TinyNet(torch.nn.Module):
    """Pure-torch MoE model (no transformers): embeddings and residual Megatron-style MoE blocks."""

    def __init__(self, vocab: int = 50, h: int = 16, e: int = 4, k: int = 2, blocks: int = 2) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, h)
        self.blocks = torch.nn.ModuleList(MegatronStyleMoE(h, e, k) for _ in range(blocks))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        for b in self.blocks:
            x = x + b(x)
        return x


def distributed_model() -> TinyNet:
    torch.manual_seed(31)
    return TinyNet(vocab=VOCAB, h=32, e=8, k=2, blocks=3).train()


def distributed_batch(step: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randint(0, VOCAB, (4, 24), generator=g)


def distributed_worker(rank: int, world: int, init: str, out: str, steps: int, every: int) -> None:
    """One gloo rank: the same model, its own batches (seed 100 * step + rank), rank 0 writes JSONL."""
    import torch.distributed as dist

    import moediag

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = distributed_model()
        sinks = [f"jsonl:{out}"] if rank == 0 else [f"jsonl:{out}.rank{rank}"]
        kw = {"top_k": 2, "score_function": "sigmoid", "on_alert": "ignore"}
        with moediag.Monitor(model, every=every, sinks=sinks, **kw) as mon, torch.no_grad():  # type: ignore[arg-type]
            for step in range(steps):
                model(distributed_batch(step, rank))
        assert mon.reports == steps // every
    finally:
        dist.destroy_process_group()
