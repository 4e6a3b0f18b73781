"""Train a tiny Mixtral-style MoE on the CPU with and without the auxiliary load-balancing loss
and record both on held-out prose and code into sample_traces/.

Data, all offline and shipped with Python itself:
  prose  the Python language reference as plain text (``pydoc_data.topics``: the text ``help()`` shows)
  code   the standard library's own ``.py`` sources
Documents are split by name: every 8th topic and every 8th module (sorted) are held out for recording.

Tokens are UTF-8 bytes (vocabulary 256), the byte-level fallback ``moediag record`` uses for a model
folder without tokenizer files, so the saved checkpoints record with no extra files.

Run (about 5-8 minutes per run on 2 CPU cores):
    python scripts/train_sample_models.py            # writes sample_traces/trained_{aux,noaux,aux_layer}.*
    python scripts/train_sample_models.py --steps 50 --out /tmp/quick   # a smoke run

Three runs (--runs): "aux" uses transformers' own router aux loss (coefficient 0.02; it pools the router
logits of all layers before balancing), "noaux" has none, "aux_layer" applies the same loss to each
layer alone and averages. Writes, per run R:
  sample_traces/trained_R/                 the checkpoint (config.json + model.safetensors, ~3 MB)
  sample_traces/trained_R.safetensors      held-out trace: logits, top-k, router inputs, outcomes, domains
and prints the figures (training loss, held-out loss/accuracy, load balance per layer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


#: aux = transformers' own router aux loss (coefficient 0.02), which pools all layers' router logits before
#: balancing; aux_layer = the same loss per layer, averaged; noaux = no balancing loss at all
RUNS = ("aux", "noaux", "aux_layer")


def corpus() -> dict[str, tuple[str, str]]:
    """{domain: (train text, held-out text)}."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    prose_train = "\n\n".join(topics[n] for i, n in enumerate(names) if i % 8)
    prose_held = "\n\n".join(topics[n] for i, n in enumerate(names) if i % 8 == 0)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 200_000)
    code = [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in files]
    code_train = "\n\n".join(t for i, (_, t) in enumerate(code) if i % 8)
    code_held = "\n\n".join(t for i, (_, t) in enumerate(code) if i % 8 == 0)
    return {"prose": (prose_train, prose_held), "code": (code_train, code_held)}


def to_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)


def make_model(seed: int):  # type: ignore[no-untyped-def]
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        router_aux_loss_coef=0.02,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return MixtralForCausalLM(cfg)


def per_layer_aux(router_logits: tuple[torch.Tensor, ...], k: int) -> torch.Tensor:
    """transformers' load-balancing loss computed for each layer alone, then averaged (balanced = k)."""
    losses = []
    for z in router_logits:
        p = torch.softmax(z.float(), dim=-1)
        chosen = torch.nn.functional.one_hot(p.topk(k, dim=-1).indices, p.shape[-1]).float()  # [T, k, E]
        losses.append((chosen.mean(0) * p.mean(0)).sum() * p.shape[-1])
    return torch.stack(losses).mean()


def train(run: str, streams: dict[str, torch.Tensor], steps: int, seq_len: int, batch: int, seed: int):  # type: ignore[no-untyped-def]
    model = make_model(seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    doms = list(streams)
    t0 = time.perf_counter()
    history = []
    for step in range(steps):
        rows = []
        for i in range(batch):
            s = streams[doms[i % len(doms)]]
            a = int(torch.randint(0, s.shape[0] - seq_len - 1, (1,), generator=gen))
            rows.append(s[a : a + seq_len])
        ids = torch.stack(rows)
        out = model(input_ids=ids, labels=ids, output_router_logits=run != "noaux")
        coef = model.config.router_aux_loss_coef
        aux_value: torch.Tensor | None
        if run == "aux_layer":  # the same loss, per layer, averaged over layers
            lm_t = out.loss - coef * out.aux_loss
            aux_value = per_layer_aux(out.router_logits, model.config.num_experts_per_tok)
            loss = lm_t + coef * aux_value
        else:  # transformers' own: aux pooled over all layers' router logits (or none)
            loss = out.loss
            lm_t = out.loss - coef * out.aux_loss if run == "aux" else out.loss
            aux_value = out.aux_loss if run == "aux" else None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        lm = float(lm_t.detach())
        history.append(lm)
        if step % 100 == 0 or step == steps - 1:
            extra = f" aux {float(aux_value.detach()):.3f}" if aux_value is not None else ""
            print(
                f"[{run}] step {step:5d} lm loss {lm:.3f}{extra} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return model.eval(), sum(history[-50:]) / len(history[-50:]), time.perf_counter() - t0


def domain_figures(path: Path) -> dict[str, dict[str, float]]:
    """Held-out accuracy and mean loss per domain, read back from the trace."""
    from moediag.trace import open_trace

    trace = open_trace(path)
    parts: dict[str, list[torch.Tensor]] = {"loss": [], "correct": [], "domain": []}
    for chunk in trace.iter_chunks():
        for name, got in parts.items():
            t = chunk.token(name)
            assert t is not None, name
            got.append(t)
    lo, co, do = (torch.cat(parts[n]) for n in ("loss", "correct", "domain"))
    co = co.float()
    return {
        name: {"accuracy": round(float(co[do == i].mean()), 3), "loss": round(float(lo[do == i].mean()), 3)}
        for i, name in enumerate(trace.meta.domains)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--record-tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "sample_traces")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    from moediag.analysis import analyze_trace
    from moediag.record import record

    data = corpus()
    streams = {d: to_bytes(train) for d, (train, _) in data.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    held = args.out / ".heldout"
    held.mkdir(exist_ok=True)
    texts = {}
    for d, (_, text) in data.items():
        texts[d] = held / f"{d}.txt"
        texts[d].write_text(text, encoding="utf-8")
    print(
        "train bytes:",
        {d: int(s.shape[0]) for d, s in streams.items()},
        "held-out bytes:",
        {d: len(t[1].encode()) for d, t in data.items()},
    )

    figures = {}
    for run in args.runs:
        model, train_loss, seconds = train(run, streams, args.steps, args.seq_len, args.batch, args.seed)
        ckpt = args.out / f"trained_{run}"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        model.save_pretrained(ckpt)
        folder = args.out / f".trained_{run}.trace"
        result = record(
            ckpt,
            texts,
            folder,
            max_tokens=args.record_tokens,
            seq_len=args.seq_len,
            batch_size=8,
            device="cpu",
            dtype="float32",
            router_inputs=True,
        )
        shards = sorted(folder.glob("*.safetensors"))
        assert len(shards) == 1, shards
        target = args.out / f"trained_{run}.safetensors"
        os.replace(shards[0], target)
        shutil.rmtree(folder)
        os.chmod(target, 0o644)
        for f in ckpt.iterdir():
            os.chmod(f, 0o644)
        a = analyze_trace(target)
        by_domain = domain_figures(target)
        s = a.summary
        per_layer = [
            {
                "layer": layer["layer"],
                "max_vio": round(layer["max_vio"], 3),
                "top_share": round(max(layer["load_share"]), 3),
                "dead": layer["dead_experts"],
                "entropy_norm": round(layer["entropy_norm"], 3),
            }
            for layer in a.layers
        ]
        figures[run] = {
            "train_seconds": round(seconds),
            "train_lm_loss_last50": round(train_loss, 3),
            "heldout_tokens": result.tokens,
            "heldout_accuracy": round(s["accuracy"], 3),
            "heldout_by_domain": by_domain,
            "max_vio_mean": round(s["max_vio"]["mean"], 3),
            "max_vio_worst": round(s["max_vio"]["worst"], 3),
            "dead_experts": s["dead_experts"],
            "layers": per_layer,
        }
        print(json.dumps({run: figures[run]}, indent=1), flush=True)
    shutil.rmtree(held)
    fig_path = args.out / "trained_figures.json"
    old = json.loads(fig_path.read_text()) if fig_path.exists() else {}
    fig_path.write_text(json.dumps({**old, **figures}, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
