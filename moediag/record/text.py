"""Text to token windows: the model's own tokenizer when its folder has one, else bytes.

Byte-level fallback (a folder without tokenizer files): the text's UTF-8 bytes, each taken modulo the
model's vocabulary size (``id = byte % vocab_size``; with 256 or more entries that is just the byte). It
is what the tiny test models and ``scripts/train_sample_models.py`` use.

Windows: the token stream of each text is cut into windows of at most ``seq_len`` tokens. The target of
every recorded token is the token that follows it in the text, including the last token of a window (its
target is the first token of the next window), so every recorded token has a ``correct`` and a ``loss``;
only the text's final token is never an input. When the tokenizer prepends a BOS token by default, every
window starts with BOS (whose target is the window's first text token).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from moediag.errors import InvalidInputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


@dataclass
class TextTokenizer:
    """How text becomes ids: ``encode`` returns a 1-D int64 tensor."""

    name: str
    encode: Callable[[str], torch.Tensor]
    bos_id: int | None = None
    pad_id: int = 0


def byte_tokenizer(vocab_size: int) -> TextTokenizer:
    """The documented fallback: UTF-8 bytes modulo the vocabulary size."""

    def encode(text: str) -> torch.Tensor:
        data = text.encode("utf-8")
        if not data:
            return torch.zeros(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) % vocab_size

    return TextTokenizer(name="bytes", encode=encode)


def load_tokenizer(model_dir: str | os.PathLike[str], vocab_size: int) -> TextTokenizer:
    """The folder's tokenizer (local files only), or the byte-level fallback when it has none."""
    folder = Path(model_dir)
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        return byte_tokenizer(vocab_size)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"could not load the tokenizer: {first}", folder) from None
    bos = tok.bos_token_id
    try:
        adds_bos = bos is not None and tok("a").input_ids[:1] == [bos]
    except Exception:  # pragma: no cover - exotic tokenizers
        adds_bos = False
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def encode(text: str) -> torch.Tensor:
        ids = tok(text, add_special_tokens=False).input_ids
        return torch.tensor(ids, dtype=torch.int64)

    return TextTokenizer(
        name=type(tok).__name__, encode=encode, bos_id=bos if adds_bos else None, pad_id=int(pad)
    )


def read_text(path: str | os.PathLike[str], max_chars: int | None = None) -> str:
    """A text file as str (UTF-8; undecodable bytes become U+FFFD), at most ``max_chars`` characters."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError("text file not found" if not p.exists() else "not a file", p)
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return f.read(max_chars) if max_chars is not None else f.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read: {exc.strerror}", p) from None


@dataclass
class Window:
    """One sequence to run: its input ids and the target of each position."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    domain: int


def windows(
    ids: torch.Tensor,
    seq_len: int,
    *,
    bos_id: int | None = None,
    domain: int = 0,
    max_tokens: int | None = None,
) -> Iterator[Window]:
    """Cut one token stream into windows; ``max_tokens`` bounds the recorded (input) tokens."""
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    n = ids.shape[0]
    budget = max_tokens if max_tokens is not None else n + n // max(seq_len - 1, 1) + 1
    a = 0
    while a < n - 1 and budget > 0:
        if bos_id is not None:
            b = min(a + seq_len - 1, n - 1, a + budget - 1)
            inp = torch.cat([torch.tensor([bos_id], dtype=ids.dtype), ids[a:b]])
            tgt = ids[a : b + 1]
            if b == a:  # no room left for text after BOS
                break
        else:
            b = min(a + seq_len, n - 1, a + budget)
            inp = ids[a:b]
            tgt = ids[a + 1 : b + 1]
        budget -= inp.shape[0]
        yield Window(inp, tgt, domain)
        a = b
