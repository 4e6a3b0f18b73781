"""Generated hostile inputs for every reader and output path, and a runner that checks the contract.

Nothing here is stored: each case is built from a seed into a fresh folder. A case is a command line plus
the inputs it reads and the outputs it may write. The contract every case is held to:

- exit 0, 1 or 2 (never 3, never a signal), within a time limit (a hang is a failure);
- on exit 2: exactly one line on stderr (``moediag: error: ...``), no traceback, nothing at the target
  that was not there before, and no temp file beside it;
- inputs byte-identical afterwards (and every file in the case folder that is not an output);
- peak RSS under a bound.

Cases run in a forked child of one process that has imported moediag and torch already (a fork costs
milliseconds; a fresh interpreter a second or more), with stdout/stderr sent to files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

TIME_LIMIT_S = 60.0
#: peak RSS of a case (the parent's resident pages count too: ~0.3-0.5 GB of torch + moediag)
RSS_LIMIT_BYTES = 1536 << 20
_DEEP = 100_000
#: randomly damaged traces and importer files per seed (on top of the fixed hostile set)
RANDOM_PER_SEED = 8


@dataclass
class Case:
    name: str
    argv: list[str]
    #: files and folders the command reads (checked byte-identical afterwards)
    inputs: list[Path] = field(default_factory=list)
    #: where the command may write (after exit 2: as before the run; never a temp file beside it)
    outputs: list[Path] = field(default_factory=list)
    #: exit codes this case may give (default 0, 1 or 2)
    allowed: frozenset[int] = frozenset({0, 1, 2})


@dataclass
class Outcome:
    case: Case
    rc: int
    seconds: float
    rss: int
    stderr: str
    problems: list[str]


# -- building blocks ---------------------------------------------------------------------------------
def _meta(e: int = 8, k: int = 2) -> dict[str, str]:
    return {
        "format": "moediag-trace",
        "version": "1",
        "num_experts": str(e),
        "top_k": str(k),
        "score_function": "softmax",
    }


def _valid_tensors(rng: random.Random, tokens: int = 64, e: int = 8, k: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    out = {f"layers.{layer}.router_logits": torch.randn(tokens, e, generator=g) for layer in (0, 1)}
    out["tokens.sequence_ids"] = torch.arange(tokens, dtype=torch.int32) // 16
    return out


def write_valid_trace(path: Path, rng: random.Random) -> Path:
    save_file(_valid_tensors(rng), str(path), metadata=_meta())
    return path


def raw_safetensors(header: Any, data: bytes = b"", *, header_text: str | None = None) -> bytes:
    text = header_text if header_text is not None else json.dumps(header)
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def _header_of(path: Path) -> tuple[dict[str, Any], bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _deep(n: int = _DEEP, open_: str = "[", close: str = "]") -> str:
    return open_ * n + close * n


# -- trace headers and shards --------------------------------------------------------------------------
def _trace_mutations() -> list[tuple[str, Callable[[dict[str, Any], bytes, random.Random], bytes]]]:
    def meta_set(key: str, value: str) -> Callable[[dict[str, Any], bytes, random.Random], bytes]:
        def f(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
            h["__metadata__"][key] = value
            return raw_safetensors(h, d)

        return f

    def rename(new: str) -> Callable[[dict[str, Any], bytes, random.Random], bytes]:
        def f(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
            h[new] = h.pop("layers.1.router_logits")
            return raw_safetensors(h, d)

        return f

    def text_sub(old: str, new: str) -> Callable[[dict[str, Any], bytes, random.Random], bytes]:
        def f(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
            return raw_safetensors(None, d, header_text=json.dumps(h).replace(old, new, 1))

        return f

    def entry(name: str, **change: Any) -> Callable[[dict[str, Any], bytes, random.Random], bytes]:
        def f(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
            h[name].update(change)
            return raw_safetensors(h, d)

        return f

    def zero_width(kind: str, width: int) -> Callable[[dict[str, Any], bytes, random.Random], bytes]:
        def f(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
            end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
            h.pop("layers.1.router_logits")
            h[f"layers.1.{kind}"] = {"dtype": "I64", "shape": [0, width], "data_offsets": [end, end]}
            if kind == "expert_counts":
                h["__metadata__"].pop("num_experts")
            return raw_safetensors(h, d)

        return f

    def flip(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
        blob = bytearray(raw_safetensors(h, d))
        for _ in range(r.randint(1, 8)):
            i = r.randrange(8, min(len(blob), 8 + len(json.dumps(h))))
            blob[i] = r.randrange(256)
        return bytes(blob)

    def truncate(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
        blob = raw_safetensors(h, d)
        return blob[: r.randrange(0, len(blob))]

    def lying_length(h: dict[str, Any], d: bytes, r: random.Random) -> bytes:
        blob = raw_safetensors(h, d)
        return struct.pack("<Q", r.choice([0, 1, len(blob), 1 << 40, (1 << 64) - 1])) + blob[8:]

    return [
        ("meta num_experts 8.7", meta_set("num_experts", "8.7")),
        ("meta num_experts 1e10", meta_set("num_experts", "1e10")),
        ("meta num_experts huge", meta_set("num_experts", "9" * 30)),
        ("meta num_experts -3", meta_set("num_experts", "-3")),
        ("meta top_k 2000", meta_set("top_k", "2000")),
        ("meta top_k 0", meta_set("top_k", "0")),
        ("meta score nonsense", meta_set("score_function", "tanh")),
        ("meta version 2", meta_set("version", "2")),
        ("meta domains deep", meta_set("domains", _deep())),
        ("meta domains NaN", meta_set("domains", "[NaN]")),
        ("meta n_group alone", meta_set("n_group", "2")),
        ("meta layer override leading zero", meta_set("layers.01.top_k", "3")),
        ("meta layer override huge", meta_set("layers.99999999999.top_k", "3")),
        ("layer name leading zero", rename("layers.01.router_logits")),
        ("layer name arabic digit", rename("layers.\u0661.router_logits")),
        ("layer name fullwidth digit", rename("layers.\uff11.router_logits")),
        ("layer name huge index", rename("layers.123456789012.router_logits")),
        ("unknown tensor", rename("weights")),
        ("header deep nesting", text_sub('"__metadata__"', f'"x": {_deep()}, "__metadata__"')),
        ("header NaN offset", text_sub('"data_offsets": [0', '"data_offsets": [NaN')),
        ("header Infinity shape", text_sub('"shape": [64', '"shape": [Infinity')),
        ("header 1e999 shape", text_sub('"shape": [64', '"shape": [1e999')),
        ("header 5000-digit shape", text_sub('"shape": [64', '"shape": [' + "9" * 5000)),
        ("header float shape", text_sub('"shape": [64', '"shape": [64.5')),
        ("header duplicate key", text_sub('"__metadata__"', '"layers.0.router_logits": {}, "__metadata__"')),
        ("header not object", lambda h, d, r: raw_safetensors([1, 2, 3], d)),
        ("header metadata not strings", lambda h, d, r: raw_safetensors({**h, "__metadata__": {"a": 1}}, d)),
        ("dtype unknown", entry("layers.0.router_logits", dtype="F128")),
        ("dtype int logits", entry("layers.0.router_logits", dtype="I32")),
        ("shape negative", entry("layers.0.router_logits", shape=[-64, 8])),
        ("shape rank 3", entry("layers.0.router_logits", shape=[8, 8, 8])),
        ("offsets reversed", entry("layers.0.router_logits", data_offsets=[2048, 0])),
        ("offsets past end", entry("layers.0.router_logits", data_offsets=[1 << 40, (1 << 40) + 2048])),
        ("router_logits [0, 2**40]", zero_width("router_logits", 1 << 40)),
        ("expert_counts [0, 2**40]", zero_width("expert_counts", 1 << 40)),
        ("topk_ids [0, 2000]", zero_width("topk_ids", 2000)),
        ("byte flips", flip),
        ("truncated", truncate),
        ("lying header length", lying_length),
        ("not utf-8 header", lambda h, d, r: struct.pack("<Q", 4) + b"\xff\xfe{}" + d),
    ]


TRACE_COMMANDS: list[tuple[str, list[str], str | None]] = [
    ("inspect", ["inspect"], None),
    ("inspect --json --detail", ["inspect", "--json", "--detail"], None),
    ("check", ["check"], None),
    ("check json -o", ["check", "--format", "json", "-o"], "out.json"),
    ("report", ["report", "-o"], "report.html"),
    ("plot", ["plot", "--kind", "load-heatmap", "-o"], "plot.png"),
]


def _with_command(root: Path, name: str, target: Path, rng: random.Random, inputs: list[Path]) -> Case:
    label, argv, out = rng.choice(TRACE_COMMANDS)
    full = ["moediag", *argv[:1], str(target), *argv[1:]]
    outputs: list[Path] = []
    if out is not None:
        full.append(str(root / out))
        outputs.append(root / out)
    return Case(f"{name} [{label}]", full, inputs, outputs)


def trace_cases(root: Path, rng: random.Random) -> Iterator[Case]:
    base = write_valid_trace(root / "valid.safetensors", rng)
    header, data = _header_of(base)
    for name, mutate in _trace_mutations():
        sub = root / f"t{rng.randrange(1 << 30):x}"
        sub.mkdir()
        path = sub / "trace.safetensors"
        path.write_bytes(mutate(json.loads(json.dumps(header)), data, rng))
        yield _with_command(sub, f"trace: {name}", path, rng, [path])
    # random damage: byte flips in the header, truncation, a lying length prefix, several per seed
    random_ones = [
        m for m in _trace_mutations() if m[0] in ("byte flips", "truncated", "lying header length")
    ]
    for i in range(RANDOM_PER_SEED):
        name, mutate = rng.choice(random_ones)
        sub = root / f"r{i}-{rng.randrange(1 << 30):x}"
        sub.mkdir()
        path = sub / "trace.safetensors"
        path.write_bytes(mutate(json.loads(json.dumps(header)), data, rng))
        yield _with_command(sub, f"trace: random {name} #{i}", path, rng, [path])
    # data-level lies the header can't show
    for name, ids in (
        ("topk_ids out of range", torch.tensor([[0, 9], [1, 2]])),
        ("topk_ids duplicate", torch.tensor([[3, 3], [1, 2]])),
        ("topk_ids negative", torch.tensor([[-7, 1], [1, 2]])),
    ):
        sub = root / f"t{rng.randrange(1 << 30):x}"
        sub.mkdir()
        path = sub / "trace.safetensors"
        save_file({"layers.0.topk_ids": ids}, str(path), metadata=_meta())
        yield _with_command(sub, f"trace: {name}", path, rng, [path])
    sub = root / "shards"
    sub.mkdir()
    write_valid_trace(sub / "part-00000.safetensors", rng)
    save_file(
        {"layers.0.router_logits": torch.randn(4, 4)}, str(sub / "part-00001.safetensors"), metadata=_meta(4)
    )
    yield _with_command(root, "shards: different tensors", sub, rng, [sub])
    empty = root / "empty-folder"
    empty.mkdir()
    yield _with_command(root, "trace: empty folder", empty, rng, [])
    nothing = root / "zero.safetensors"
    nothing.write_bytes(b"")
    yield _with_command(root, "trace: empty file", nothing, rng, [nothing])
    loop = root / "loop.safetensors"
    os.symlink(loop.name, loop)
    yield _with_command(root, "trace: symlink loop", loop, rng, [])
    yield _with_command(root, "trace: /dev/zero", Path("/dev/zero"), rng, [])
    fifo = root / "fifo.safetensors"
    os.mkfifo(fifo)
    yield _with_command(root, "trace: FIFO", fifo, rng, [])
    dense = root / "dense.safetensors"
    save_file({"w": torch.zeros(3)}, str(dense))
    yield Case(
        "fail closed: dense safetensors [check]",
        ["moediag", "check", str(dense)],
        [dense],
        [],
        frozenset({2}),
    )
    yield Case(
        "fail closed: --allow-empty [check]",
        ["moediag", "check", str(dense), "--allow-empty"],
        [dense],
        [],
        frozenset({0}),
    )
    masked = root / "masked.safetensors"
    t = _valid_tensors(rng)
    t["tokens.mask"] = torch.zeros(64, dtype=torch.bool)
    save_file(t, str(masked), metadata=_meta())
    yield Case(
        "fail closed: every token masked [check]",
        ["moediag", "check", str(masked)],
        [masked],
        [],
        frozenset({2}),
    )


# -- checkpoints -----------------------------------------------------------------------------------
def _mixtral(
    folder: Path, rng: random.Random, *, config: str | None = None, drop_expert: bool = False
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    e, h, i = 4, 16, 8
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(32, h, generator=g)}
    for layer in range(2):
        p = f"model.layers.{layer}.block_sparse_moe."
        tensors[p + "gate.weight"] = torch.randn(e, h, generator=g)
        for x in range(e):
            for w, shape in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
                if drop_expert and layer == 1 and x == 2 and w == "w2":
                    continue  # one expert's down projection lost (a bad download or conversion)
                tensors[f"{p}experts.{x}.{w}.weight"] = torch.randn(*shape, generator=g)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = {
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "num_local_experts": e,
        "num_experts_per_tok": 2,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": 2,
        "vocab_size": 32,
    }
    (folder / "config.json").write_text(config if config is not None else json.dumps(cfg))
    return folder


def checkpoint_cases(root: Path, rng: random.Random) -> Iterator[Case]:
    good = json.dumps({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2})
    configs = {
        "config deep": '{"a": ' + _deep() + "}",
        "config NaN": good.replace("4", "NaN", 1),
        "config Infinity": good.replace("4", "Infinity", 1),
        "config 1e999": good.replace("4", "1e999", 1),
        "config 5000 digits": good.replace("4", "9" * 5000, 1),
        "config experts 1e10": good.replace("4", "10000000000", 1),
        "config top_k string": good.replace('"num_experts_per_tok": 2', '"num_experts_per_tok": "two"'),
        "config not object": "[1, 2]",
        "config junk": "\x00\xff{",
        "config empty": "",
    }
    commands = (["inspect"], ["check"], ["inspect", "--json"], ["report", "-o"])
    for name, text in configs.items():
        folder = _mixtral(root / f"c{rng.randrange(1 << 30):x}", rng, config=text)
        yield _ckpt_case(root, f"checkpoint: {name}", folder, rng.choice(commands))
    folder = _mixtral(root / f"c{rng.randrange(1 << 30):x}", rng, drop_expert=True)
    yield _ckpt_case(root, "checkpoint: one expert tensor missing", folder, rng.choice(commands), want={2})
    outside = root / "outside.safetensors"
    save_file({"secret": torch.zeros(2)}, str(outside))
    for name, fname in (
        ("index ../x", "../outside.safetensors"),
        ("index absolute", str(outside)),
        ("index /etc/passwd", "../../../../../../../../etc/passwd"),
        ("index via a symlink the folder holds", "link.safetensors"),
        ("index FIFO shard", "fifo.safetensors"),
    ):
        folder = _mixtral(root / f"c{rng.randrange(1 << 30):x}", rng)
        os.symlink(outside, folder / "link.safetensors")
        os.mkfifo(folder / "fifo.safetensors")
        index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": fname}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        want = None if "symlink" in name else {2}
        yield _ckpt_case(
            root, f"checkpoint: {name}", folder, rng.choice(commands), extra=[outside], want=want
        )
    for name, text in (
        ("index deep", '{"weight_map": ' + _deep(open_='{"a":', close="}") + "}"),
        ("index NaN", '{"weight_map": {"a": NaN}}'),
        ("index weight_map list", '{"weight_map": [1]}'),
    ):
        folder = _mixtral(root / f"c{rng.randrange(1 << 30):x}", rng)
        (folder / "model.safetensors.index.json").write_text(
            text.replace('{"a":' * _DEEP, '{"a":' * _DEEP, 1)
        )
        yield _ckpt_case(root, f"checkpoint: {name}", folder, rng.choice(commands), want={2})


def _ckpt_case(
    root: Path,
    name: str,
    folder: Path,
    command: tuple[str, ...] | list[str],
    *,
    extra: list[Path] | None = None,
    want: set[int] | None = None,
) -> Case:
    argv = ["moediag", command[0], str(folder), *command[1:]]
    outputs = []
    if command[-1] == "-o":
        out = folder.parent / f"{folder.name}.html"
        argv.append(str(out))
        outputs.append(out)
    inputs = [p for p in folder.iterdir() if not stat.S_ISFIFO(os.lstat(p).st_mode) and not p.is_symlink()]
    allowed = frozenset(want) if want else frozenset({0, 1, 2})
    return Case(f"{name} [{' '.join(command)}]", argv, inputs + (extra or []), outputs, allowed)


# -- importers -------------------------------------------------------------------------------------
def _npy_lying_shape() -> bytes:
    """An .npy header claiming 10^8 x 3 x 2 int16 over 24 bytes of data."""
    import io

    from numpy.lib import format as npformat

    b = io.BytesIO()
    npformat.write_array_header_1_0(b, {"descr": "<i2", "fortran_order": False, "shape": (99_999_999, 3, 2)})
    return b.getvalue() + b"\x00" * 24


def importer_cases(root: Path, rng: random.Random) -> Iterator[Case]:
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    files: list[tuple[str, str, str, Callable[[Path], None]]] = [
        ("hf", "junk .pt", "x.pt", lambda p: p.write_bytes(os.urandom(256))),
        ("hf", "empty .pt", "x.pt", lambda p: p.write_bytes(b"")),
        ("hf", "string entries", "x.pt", lambda p: torch.save({"a": torch.zeros(2)}, p)),
        (
            "hf",
            "float ids pair",
            "x.pt",
            lambda p: torch.save(((torch.randn(4, 8), torch.rand(4, 2) * 8),), p),
        ),
        ("hf", "3-d logits", "x.pt", lambda p: torch.save((torch.randn(2, 2, 2),), p)),
        ("hf", "top-k over experts", "x.pt", lambda p: torch.save((torch.randn(4, 8),), p)),
        ("vllm", "choices 5", "x.json", lambda p: p.write_text('{"choices": 5}')),
        (
            "vllm",
            "string token ids",
            "x.json",
            lambda p: p.write_text(json.dumps({"routed_experts": [[[1, 2]]], "prompt_token_ids": ["a"]})),
        ),
        ("vllm", "deep json", "x.json", lambda p: p.write_text(_deep())),
        ("vllm", "NaN json", "x.json", lambda p: p.write_text('{"routed_experts": [[[NaN, 1]]]}')),
        ("vllm", "non-utf8 jsonl", "x.jsonl", lambda p: p.write_bytes(b"\xff\xfe\n{}\n")),
        ("vllm", "empty npy", "x.npy", lambda p: p.write_bytes(b"")),
        ("vllm", "junk npy", "x.npy", lambda p: p.write_bytes(b"\x93NUMPY" + os.urandom(64))),
        ("vllm", "npy lying shape", "x.npy", lambda p: p.write_bytes(_npy_lying_shape())),
        ("vllm", "float ids npy", "x.npy", lambda p: np.save(p, np.full((3, 2, 2), 1.5))),
        ("vllm", "duplicate ids npy", "x.npy", lambda p: np.save(p, np.ones((3, 2, 2), dtype=np.int16))),
        ("vllm", "junk npz", "x.npz", lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(64))),
        ("vllm", "empty npz", "x.npz", lambda p: np.savez(p)),
        ("megatron", "non-utf8 jsonl", "router_trace_rank0.jsonl", lambda p: p.write_bytes(b"\xff\n")),
        ("megatron", "deep jsonl", "router_trace_rank0.jsonl", lambda p: p.write_text(_deep() + "\n")),
        ("megatron", "negative offset", "router_trace_rank0.jsonl", lambda p: _megatron(p, offset=-5)),
        (
            "megatron",
            "huge claimed bytes",
            "router_trace_rank0.jsonl",
            lambda p: _megatron(p, nbytes=1 << 40),
        ),
        ("megatron", "string layer", "router_trace_rank0.jsonl", lambda p: _megatron(p, layer="x")),
        ("sglang", "junk .pt", "x.pt", lambda p: p.write_bytes(os.urandom(128))),
        (
            "sglang",
            "tensor per-token fields",
            "x.pt",
            lambda p: torch.save({"topk_ids": torch.zeros(2, 2), "input_ids": torch.zeros(2, 2)}, p),
        ),
        ("trtllm", "junk safetensors", "rank0.safetensors", lambda p: p.write_bytes(os.urandom(64))),
        ("trtllm", "bad meta", "rank0.safetensors", lambda p: _trtllm(p, '{"num_experts": 1e400}')),
        ("trtllm", "deep meta", "rank0.safetensors", lambda p: _trtllm(p, _deep())),
    ]
    suffixes = {"hf": ".pt", "sglang": ".pt", "vllm": ".npy", "megatron": ".jsonl", "trtllm": ".safetensors"}
    for i in range(RANDOM_PER_SEED):
        fmt = rng.choice(sorted(suffixes))
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 512)))
        fname = (
            "router_trace_rank0" if fmt == "megatron" else "rank0" if fmt == "trtllm" else "x"
        ) + suffixes[fmt]
        files.append((fmt, f"random bytes #{i}", fname, lambda p, b=blob: p.write_bytes(b)))
    for fmt, name, fname, make in files:
        sub = root / f"i{rng.randrange(1 << 30):x}"
        sub.mkdir()
        src = sub / fname
        make(src)
        (sub / "unrelated.txt").write_text("keep me")
        target = sub / "out" if rng.random() < 0.5 else sub / "out.safetensors"
        extra = ["--num-experts", "8", "--top-k", "2", "--score-function", "softmax"] if fmt == "hf" else []
        if fmt == "vllm":
            extra = ["--num-experts", "8"]
        yield Case(
            f"import {fmt}: {name}",
            ["moediag", "import", fmt, str(src), "-o", str(target), *extra],
            [sub],
            [target],
        )
    del g


def _megatron(path: Path, *, offset: int = 0, nbytes: int = 16, layer: Any = 0) -> None:
    (path.parent / "logits_rank0.bin").write_bytes(b"\x00" * 16)
    rec = {
        "step": 0,
        "stage": "pre_dispatch",
        "block": "decoder",
        "layer": layer,
        "rank": 0,
        "num_tokens": 2,
        "topk": 2,
        "logit_offset": offset,
        "logit_bytes": nbytes,
        "logit_shape": [2, 4],
        "top_indices": [[0, 1], [2, 3]],
    }
    path.write_text(json.dumps(rec) + "\n")


def _trtllm(path: Path, meta: str) -> None:
    save_file({"0_0": torch.zeros(4, dtype=torch.int32)}, str(path))
    (path.parent / "meta_info.json").write_text(meta)


# -- configs and baselines ---------------------------------------------------------------------------------
def config_cases(root: Path, rng: random.Random) -> Iterator[Case]:
    trace = write_valid_trace(root / "cfg-trace.safetensors", rng)
    tomls = {
        "toml deep": "[check]\nx = " + _deep(20_000) + "\n",
        "toml capacity 0": "[check]\ncapacity_factor = 0\n",
        "toml capacity 1e308": "[check]\ncapacity_factor = 1e308\n",
        "toml capacity inf": "[check]\ncapacity_factor = inf\n",
        "toml huge int": "[check]\nmin_expected_load = " + "9" * 5000 + "\n",
        "toml layers huge": '[check]\nlayers = "0-4000000000"\n',
        "toml junk": "\x00\xff[[[",
        "toml unknown key": "[check]\nmax_vioo = 1\n",
        "toml big": "# " + "x" * (2 << 20) + "\n",
    }
    for name, text in tomls.items():
        p = root / f"c{rng.randrange(1 << 30):x}.toml"
        p.write_text(text, encoding="utf-8", errors="surrogateescape")
        yield Case(f"config: {name}", ["moediag", "check", str(trace), "--config", str(p)], [p, trace])
    fifo = root / "config-fifo.toml"
    os.mkfifo(fifo)
    yield Case(
        "config: FIFO", ["moediag", "check", str(trace), "--config", str(fifo)], [trace], [], frozenset({2})
    )
    yield Case(
        "config: /dev/zero",
        ["moediag", "check", str(trace), "--config", "/dev/zero"],
        [trace],
        [],
        frozenset({2}),
    )
    yield Case(
        "flag: --layers 0-4000000000",
        ["moediag", "check", str(trace), "--layers", "0-4000000000"],
        [trace],
        [],
        frozenset({2}),
    )
    baselines = {
        "baseline deep": _deep(),
        "baseline NaN": '{"summary": NaN}',
        "baseline 1e999": '{"summary": {"max_vio": 1e999}}',
        "baseline junk": "\xff\xfe",
        "baseline list": "[]",
        "baseline layers wrong": '{"meta": {"kind": "trace"}, "layers": 5}',
    }
    for name, text in baselines.items():
        p = root / f"b{rng.randrange(1 << 30):x}.json"
        p.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else b"\xff\xfe")
        yield Case(f"baseline: {name}", ["moediag", "check", str(trace), "--baseline", str(p)], [p, trace])
    bfifo = root / "baseline-fifo.json"
    os.mkfifo(bfifo)
    yield Case(
        "baseline: FIFO",
        ["moediag", "check", str(trace), "--baseline", str(bfifo)],
        [trace],
        [],
        frozenset({2}),
    )
    yield Case(
        "baseline: /dev/zero",
        ["moediag", "check", str(trace), "--baseline", "/dev/zero"],
        [trace],
        [],
        frozenset({2}),
    )


# -- outputs ---------------------------------------------------------------------------------------
def output_cases(root: Path, rng: random.Random) -> Iterator[Case]:
    trace = write_valid_trace(root / "out-trace.safetensors", rng)
    two = {"allowed": frozenset({2})}
    yield Case(
        "output: check -o onto its input",
        ["moediag", "check", str(trace), "-f", "json", "-o", str(trace)],
        [trace],
        [trace],
        **two,
    )
    src = root / "src"
    src.mkdir()
    torch.save((torch.randn(4, 8),), src / "x.pt")
    (src / "unrelated.txt").write_text("keep")
    hf = ["--top-k", "2", "--score-function", "softmax"]
    yield Case(
        "output: import -o the folder holding the source",
        ["moediag", "import", "hf", str(src / "x.pt"), "-o", str(src), *hf],
        [src],
        [src],
        **two,
    )
    yield Case(
        "output: import -o its own source file",
        ["moediag", "import", "hf", str(src), "-o", str(src / "x.pt"), *hf],
        [src],
        [src],
        **two,
    )
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("not moediag's")
    yield Case(
        "output: import -o a foreign folder",
        ["moediag", "import", "hf", str(src / "x.pt"), "-o", str(foreign), *hf],
        [src, foreign],
        [foreign],
        **two,
    )
    ffile = root / "notes.html"
    ffile.write_text("<p>mine</p>")
    yield Case(
        "output: report -o a foreign file",
        ["moediag", "report", str(trace), "-o", str(ffile)],
        [trace, ffile],
        [ffile],
        **two,
    )
    afile = root / "a-file"
    afile.write_text("x")
    yield Case(
        "output: -o under a file",
        ["moediag", "check", str(trace), "-f", "json", "-o", str(afile / "x.json")],
        [trace, afile],
        [afile / "x.json"],
        **two,
    )
    adir = root / "a-dir.json"
    adir.mkdir()
    yield Case(
        "output: -o names a folder",
        ["moediag", "check", str(trace), "-f", "json", "-o", str(adir)],
        [trace, adir],
        [adir],
        **two,
    )
    yield Case(
        "output: -o unwritable (/proc)",
        ["moediag", "check", str(trace), "-f", "json", "-o", "/proc/moediag-fuzz.json"],
        [trace],
        [],
        **two,
    )
    yield Case(
        "output: -o a device",
        ["moediag", "check", str(trace), "-f", "json", "-o", "/dev/null"],
        [trace],
        [],
        **two,
    )
    ofifo = root / "out.fifo.json"
    os.mkfifo(ofifo)
    yield Case(
        "output: -o a FIFO",
        ["moediag", "check", str(trace), "-f", "json", "-o", str(ofifo)],
        [trace],
        [],
        **two,
    )
    link = root / "dangling.json"
    os.symlink(root / "nowhere" / "x.json", link)
    yield Case(
        "output: -o a dangling symlink",
        ["moediag", "check", str(trace), "-f", "json", "-o", str(link)],
        [trace],
        [],
        **two,
    )


SUITES: dict[str, Callable[[Path, random.Random], Iterator[Case]]] = {
    "trace": trace_cases,
    "checkpoint": checkpoint_cases,
    "importer": importer_cases,
    "config": config_cases,
    "output": output_cases,
}


# -- running ---------------------------------------------------------------------------------------
def _snapshot(paths: list[Path], skip: list[Path] | None = None) -> dict[str, str]:
    """sha256 of every regular file under ``paths`` (the file type otherwise), leaving out ``skip``."""
    out: dict[str, str] = {}
    skipped = [str(s) for s in skip or []]
    for p in paths:
        items = [p] if not p.is_dir() else [p, *sorted(p.rglob("*"))]
        for q in items:
            if any(
                str(q) == s
                or str(q).startswith(s + os.sep)
                or os.path.basename(q).startswith("." + os.path.basename(s) + ".")
                for s in skipped
            ):
                continue
            try:
                st = os.lstat(q)
            except OSError:
                out[str(q)] = "missing"
                continue
            if stat.S_ISREG(st.st_mode):
                out[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()
            else:
                out[str(q)] = f"mode {stat.S_IFMT(st.st_mode):o}"
    return out


def _beside(target: Path) -> list[str]:
    try:
        return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))
    except OSError:
        return []


def run_case(case: Case, work: Path) -> Outcome:
    from moediag.cli import main

    before = _snapshot(case.inputs, case.outputs)
    outs_before = _snapshot(case.outputs)
    out_path, err_path = work / "stdout", work / "stderr"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setpgid(0, 0)
            fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            rc = main(case.argv[1:])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - the child must never return into the runner
            rc = 99
        os._exit(rc if isinstance(rc, int) else 98)
    status, rusage, timed_out = 0, None, False
    while True:
        got, status, rusage = os.wait4(pid, os.WNOHANG)
        if got:
            break
        if time.monotonic() - start > TIME_LIMIT_S:
            os.killpg(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            timed_out = True
            break
        time.sleep(0.005)
    seconds = time.monotonic() - start
    rc = os.waitstatus_to_exitcode(status)
    rss = int(rusage.ru_maxrss) * 1024 if rusage is not None else 0
    stderr = err_path.read_text(errors="replace")
    problems: list[str] = []
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if timed_out:
        problems.append(f"hang: killed after {TIME_LIMIT_S:.0f} s")
    elif rc not in case.allowed:
        problems.append(f"exit {rc}, expected one of {sorted(case.allowed)}")
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    if rc == 2:
        errors = [ln for ln in lines if not ln.startswith(("moediag: note:", "moediag: warning:", "  note:"))]
        if len(errors) != 1 or not errors[0].startswith("moediag: error: "):
            problems.append(f"exit 2 without exactly one 'moediag: error:' line ({len(errors)} lines)")
        if _snapshot(case.outputs) != outs_before:
            problems.append("an output changed although the command failed")
    after = _snapshot(case.inputs, case.outputs)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        problems.append(f"inputs modified: {', '.join(changed[:3])}")
    for target in case.outputs:
        left = _beside(target)
        if left:
            problems.append(f"left beside {target.name}: {', '.join(left)}")
    if rss > RSS_LIMIT_BYTES:
        problems.append(f"peak RSS {rss / 2**30:.2f} GiB")
    return Outcome(case, rc, seconds, rss, stderr, problems)


def generate(seed: int, root: Path, suites: list[str] | None = None) -> Iterator[Case]:
    rng = random.Random(seed)
    for name, build in SUITES.items():
        if suites and name not in suites:
            continue
        sub = root / name
        sub.mkdir(parents=True, exist_ok=True)
        yield from build(sub, rng)


def peak_rss_e8192() -> dict[str, float]:
    """Peak RSS (GiB) of inspect and inspect --json --detail on a 1-layer, E = 8192, 1,024-token trace."""
    import torch

    from moediag.trace import build_metadata, write_trace

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e8192.safetensors"
        g = torch.Generator().manual_seed(0)
        meta = build_metadata(num_experts=8192, top_k=8, score_function="softmax")
        write_trace(path, {"layers.0.router_logits": torch.randn(1024, 8192, generator=g).bfloat16()}, meta)
        for label, extra in (("inspect", []), ("inspect --json --detail", ["--json", "--detail"])):
            cmd = [
                sys.executable,
                "-c",
                "import resource, subprocess, sys; "
                "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                sys.executable,
                "-m",
                "moediag",
                "inspect",
                str(path),
                *extra,
            ]
            kb = int(subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ).stdout)
            out[label] = kb / 2**20
    return out


def run_all(seeds: list[int], suites: list[str] | None = None) -> list[Outcome]:
    torch.set_num_threads(1)
    import moediag.cli  # noqa: F401  (import once in the parent: every forked case reuses it)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    outcomes: list[Outcome] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"moediag-fuzz-{seed}-") as tmp:
            root = Path(tmp)
            work = root / "_io"
            work.mkdir()
            old = os.getcwd()
            os.chdir(root)  # no stray moediag.toml from the repository applies
            try:
                outcomes.extend(run_case(case, work) for case in generate(seed, root / "cases", suites))
            finally:
                os.chdir(old)
    return outcomes
