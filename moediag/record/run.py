"""``record``: run a local transformers causal LM over text files and write a v1 trace.

>>> from moediag.record import record                             # doctest: +SKIP
>>> result = record("tiny-mixtral/", ["prose.txt", "code.py"], "trace/", max_tokens=20_000)
>>> result.tokens, result.layers                                    # doctest: +SKIP
(20000, [0, 1, 2, 3])

Never reaches a hub: ``HF_HUB_OFFLINE=1`` is set and every load uses ``local_files_only=True``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, MoediagError, UnsupportedLayoutError, UsageError
from moediag.record.batch import assemble, bytes_per_token
from moediag.record.capture import RouterHooks
from moediag.record.discover import RouterSite, find_routers, routing_info
from moediag.record.text import TextTokenizer, Window, load_tokenizer, read_text, windows
from moediag.replay.device import resolve_device
from moediag.trace.writer import SingleFileTraceWriter, TraceWriter, trace_writer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: a shard is flushed at this many bytes of per-token data (bounds memory)
SHARD_BYTES = 256 * 1024 * 1024


@dataclass
class RecordResult:
    """What ``record`` wrote."""

    path: Path
    tokens: int
    layers: list[int]
    num_experts: int
    top_k: int | None
    score_function: str
    tokenizer: str
    logits_source: dict[int, str]
    bytes: int
    seconds: float
    domains: list[str] = field(default_factory=list)


def _require_transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise MoediagError(
            "recording needs transformers, which is not installed: pip install 'moediag[record]'"
        ) from None
    return transformers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_dtype(dtype: str, device: torch.device) -> Any:
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    model_dir: str | os.PathLike[str], *, device: torch.device, dtype: Any, trust_remote_code: bool = False
) -> Any:
    """A causal LM from a local folder (never a hub), in eval mode on ``device``."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InvalidInputError("model folder not found" if not folder.exists() else "not a folder", folder)
    if not (folder / "config.json").is_file():
        raise InvalidInputError("no config.json: not a transformers model folder", folder)
    transformers = _require_transformers()
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        raise InvalidInputError(f"could not load the model: {_first_line(exc)}", folder) from None
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    return model.to(device).eval()


def _batches(it: Iterator[Window], batch_size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for w in it:
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


TextSources = Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]] | str | os.PathLike[str]


def _texts(texts: TextSources) -> list[tuple[str, Path]]:
    if isinstance(texts, Mapping):
        return [(str(k), Path(v)) for k, v in texts.items()]
    items = [texts] if isinstance(texts, (str, os.PathLike)) else list(texts)
    out = [(Path(t).stem, Path(t)) for t in items]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):  # same stem twice: number them
        out = [(f"{n}-{i}", p) for i, (n, p) in enumerate(out)]
    return out


def record(
    model_dir: str | os.PathLike[str],
    texts: TextSources,
    output: str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    seq_len: int = 512,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    router_inputs: bool = False,
    trust_remote_code: bool = False,
    model: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> RecordResult:
    """Record the routing of the model in ``model_dir`` over ``texts`` into a trace at ``output``: one
    file when the name ends in ``.safetensors``, else a folder of shards (both streamed).

    ``texts`` is a file, a list of files (the domain of each is its file stem) or a mapping of domain
    name to file. ``max_tokens`` bounds the recorded tokens over all texts (shared evenly). ``model``
    may pass an already loaded model (then ``model_dir`` supplies the tokenizer only). ``progress`` is
    called with (tokens done, tokens planned). Nothing is left at ``output`` when anything fails.
    """
    t0 = time.perf_counter()
    if seq_len < 2:
        raise UsageError("--seq-len must be at least 2")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    sources = _texts(texts)
    if not sources:
        raise UsageError("no text given: pass --text FILE")
    for _, path in sources:
        if not path.is_file():
            raise InvalidInputError("text file not found" if not path.exists() else "not a file", path)
    dev = resolve_device(device)
    if model is None:
        model = load_model(
            model_dir, device=dev, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code
        )
    else:
        _require_transformers()
        dev = next(model.parameters()).device
    sites = find_routers(model)
    if not sites:
        mt = getattr(getattr(model, "config", None), "model_type", "?")
        raise UnsupportedLayoutError(
            f"no MoE router found in this model (model_type {mt}): nothing to record; record needs a "
            "Mixture-of-Experts model",
            model_dir,
        )
    vocab = (
        int(model.get_output_embeddings().weight.shape[0])
        if model.get_output_embeddings() is not None
        else int(model.config.vocab_size)
    )
    tokenizer = load_tokenizer(model_dir, vocab)

    # tokenise (bounded: when max_tokens is given, read only as much text as can be needed)
    share = None if max_tokens is None else -(-max_tokens // len(sources))
    streams: list[tuple[int, torch.Tensor]] = []
    for i, (_, path) in enumerate(sources):
        max_chars = None if share is None else max(share * 64, 1 << 20)
        ids = tokenizer.encode(read_text(path, max_chars))
        if ids.numel() and int(ids.max()) >= vocab:
            raise InvalidInputError(
                f"tokenizer produced id {int(ids.max())} but the model's vocabulary has {vocab} entries",
                model_dir,
            )
        streams.append((i, ids))
    plan: list[Window] = []
    remaining = max_tokens
    for left, (i, ids) in enumerate(streams):
        cap = None if remaining is None else -(-remaining // (len(streams) - left))
        got = list(windows(ids, seq_len, bos_id=tokenizer.bos_id, domain=i, max_tokens=cap))
        plan.extend(got)
        if remaining is not None:
            remaining -= sum(w.input_ids.shape[0] for w in got)
    total = sum(w.input_ids.shape[0] for w in plan)
    if total == 0:
        raise InvalidInputError(
            "the text is too short: it needs at least two tokens",
            sources[0][1] if len(sources) == 1 else None,
        )

    info = routing_info(model, sites)
    domains = [name for name, _ in sources]
    extra: dict[str, Any] = {
        "recorder": "moediag record",
        "model_type": info.model_type,
        "routers": {str(s.layer): s.name for s in sites},
        "tokenizer": tokenizer.name,
        "seq_len": seq_len,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        **info.extra,
        **info.layer_overrides,
    }
    hooks = RouterHooks(sites, router_inputs=router_inputs)
    writer: TraceWriter | SingleFileTraceWriter | None = None
    done = 0
    layers = [s.layer for s in sites]
    try:
        hooks.install()
        for seq_base, batch in _enumerate_batches(_batches(iter(plan), batch_size)):
            captures, lm_logits, flat = _run_batch(model, hooks, batch, dev, tokenizer)
            tensors = assemble(
                captures,
                layers,
                rows=flat["rows"],
                input_ids=flat["input_ids"],
                positions=flat["positions"],
                sequence_ids=flat["sequence_ids"] + seq_base,
                lm_logits=lm_logits,
                targets=flat["targets"],
                domain=flat["domain"],
                router_inputs=router_inputs,
            )
            if writer is None:
                extra["logits_source"] = {str(k): v for k, v in sorted(hooks.logits_source.items())}
                meta = info.metadata(
                    model=Path(model_dir).name if model_dir else getattr(model.config, "name_or_path", None),
                    domains=domains,
                    extra=extra,
                )
                shard_tokens = max(1024, min(65_536, SHARD_BYTES // max(bytes_per_token(tensors), 1)))
                writer = trace_writer(output, meta, shard_tokens=shard_tokens)  # x.safetensors: one file
                _set_constants(writer, sites)
            writer.add(tensors)
            done += int(flat["rows"].shape[0])
            if progress is not None:
                progress(done, total)
        if writer is None:  # pragma: no cover - plan was non-empty
            raise InvalidInputError("nothing was recorded", model_dir)
        path = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        hooks.remove()
    out = Path(path)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return RecordResult(
        path=Path(path),
        tokens=done,
        layers=layers,
        num_experts=info.num_experts,
        top_k=info.top_k,
        score_function=info.score_function,
        tokenizer=tokenizer.name,
        logits_source=dict(hooks.logits_source),
        bytes=size,
        seconds=time.perf_counter() - t0,
        domains=domains,
    )


def _enumerate_batches(batches: Iterator[list[Window]]) -> Iterator[tuple[int, list[Window]]]:
    base = 0
    for b in batches:
        yield base, b
        base += len(b)


def _set_constants(writer: TraceWriter | SingleFileTraceWriter, sites: list[RouterSite]) -> None:
    for s in sites:
        bias = s.selection_bias()
        if bias is not None:
            writer.set_constant(f"layers.{s.layer}.selection_bias", bias)


def _run_batch(
    model: Any, hooks: RouterHooks, batch: list[Window], device: torch.device, tokenizer: TextTokenizer
) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor]]:
    """One padded forward; returns captures, LM logits [B*S, V] and the flattened token fields."""
    lengths = [w.input_ids.shape[0] for w in batch]
    s = max(lengths)
    b = len(batch)
    ids = torch.full((b, s), tokenizer.pad_id, dtype=torch.int64)
    targets = torch.full((b, s), -100, dtype=torch.int64)
    mask = torch.zeros((b, s), dtype=torch.int64)
    domain = torch.zeros((b, s), dtype=torch.int32)
    for i, w in enumerate(batch):
        n = lengths[i]
        ids[i, :n] = w.input_ids
        targets[i, :n] = w.targets
        mask[i, :n] = 1
        domain[i] = w.domain
    hooks.begin()
    try:
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    except BaseException:
        hooks.cancel()
        raise
    captures = hooks.end()
    logits = out.logits if hasattr(out, "logits") else out[0]
    flat_mask = mask.reshape(-1).bool()
    rows = torch.nonzero(flat_mask).squeeze(1)
    positions = torch.arange(s).repeat(b)
    seq = torch.arange(b).repeat_interleave(s)
    fields = {
        "rows": rows,
        "input_ids": ids.reshape(-1),
        "positions": positions,
        "sequence_ids": seq,
        "targets": targets.reshape(-1),
        "domain": domain.reshape(-1),
    }
    return captures, logits.reshape(b * s, -1), fields
