"""vLLM routed experts (``--enable-return-routed-experts``).

vLLM returns, per completion, ``routed_experts`` ``[tokens, moe_layers, top_k]`` (int16 in the Python API's
``CompletionOutput.routed_experts``; a base64-encoded ``.npy`` in the OpenAI-compatible server's
``choices[i].routed_experts``). ``tokens`` is every forwarded token: prompt plus completion minus the last
sampled token. vLLM writes no file, so this importer reads what users keep:

* ``.npy`` (one request), ``.npz`` (one request per array, in name order), ``.pt`` (a tensor or a list of
  tensors, ``torch.load(weights_only=True)``);
* ``.json`` / ``.jsonl``: server responses (objects with ``choices``) or objects with ``routed_experts``
  (base64 ``.npy`` or a nested list) and optional ``prompt_token_ids`` / ``token_ids``;
* a folder of these, in name order.

Each request becomes one sequence: ``tokens.sequence_ids``, ``tokens.positions`` and, when token ids are
present, ``tokens.input_ids``. The number of experts is not in the data: pass ``--num-experts``. The layer
axis numbers MoE layers from 0; pass ``--layers`` to give their model indices. A layer whose slots are all
-1 (or all 0 with top_k > 1, an impossible routing) is a dense-layer placeholder and is left out.
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers.base import (
    ImportOptions,
    ImportResult,
    TraceSink,
    check_ids,
    files_in,
    finish_per_token,
    int_tensor,
    natural_key,
    resolve_layer_ids,
    torch_load,
    trace_metadata,
)
from moediag.io import strict_json
from moediag.io.paths import JSON_MAX_BYTES, read_text_capped, require_regular
from moediag.render.words import layers_have

_FILES = r".*\.(npy|npz|pt|pth|json|jsonl)"


class Request:
    """One request's routed experts ``[tokens, moe_layers, top_k]`` and its token ids, if known."""

    def __init__(self, routed: torch.Tensor, token_ids: list[int] | None, where: str) -> None:
        self.routed = routed
        self.token_ids = token_ids
        self.where = where


def _as_tensor(obj: Any, path: Path, where: str) -> torch.Tensor:
    if isinstance(obj, str):
        try:
            obj = np.load(io.BytesIO(base64.b64decode(obj, validate=True)), allow_pickle=False)
        except (binascii.Error, ValueError, OSError, EOFError) as exc:
            raise InvalidInputError(
                f"{where}: routed_experts is not a base64 .npy payload ({exc})", path
            ) from None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "iu":
            raise InvalidInputError(f"{where}: routed_experts has dtype {obj.dtype}, expected integers", path)
        t = torch.from_numpy(obj.astype(np.int64))
    elif isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            raise InvalidInputError(f"{where}: routed_experts has dtype {obj.dtype}, expected integers", path)
        t = obj.to(torch.int64)
    elif isinstance(obj, list):
        t = int_tensor(obj, path, f"{where}: routed_experts")
        if t.numel() == 0:
            t = t.reshape(0, 0, 0)
    else:
        raise InvalidInputError(f"{where}: routed_experts is {type(obj).__name__}", path)
    if t.dim() != 3:
        raise InvalidInputError(
            f"{where}: routed_experts has shape {list(t.shape)}, expected [tokens, layers, top_k]", path
        )
    return t


def _token_ids(obj: dict[str, Any], choice: dict[str, Any], path: Path, where: str) -> list[int] | None:
    prompt = choice.get("prompt_token_ids", obj.get("prompt_token_ids"))
    completion = choice.get("token_ids")
    if prompt is None and completion is None:
        return None
    for name, value in (("prompt_token_ids", prompt), ("token_ids", completion)):
        ok = value is None or (
            isinstance(value, list)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 31 for x in value)
        )
        if not ok:
            raise InvalidInputError(f"{where}: {name} is not a list of token ids (0 <= id < 2^31)", path)
    return list(prompt or []) + list(completion or [])


def requests_from_json(obj: Any, path: Path, where: str) -> Iterator[Request]:
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: expected a JSON object", path)
    if "choices" in obj:
        if not isinstance(obj["choices"], list | None):
            raise InvalidInputError(f"{where}: choices is not a list", path)
        for ci, choice in enumerate(obj["choices"] or []):
            if not isinstance(choice, dict) or choice.get("routed_experts") is None:
                raise InvalidInputError(
                    f"{where} choice {ci}: no routed_experts (was the server started with "
                    "--enable-return-routed-experts?)",
                    path,
                )
            yield Request(
                _as_tensor(choice["routed_experts"], path, where),
                _token_ids(obj, choice, path, f"{where} choice {ci}"),
                f"{where} choice {ci}",
            )
    elif obj.get("routed_experts") is not None:
        yield Request(
            _as_tensor(obj["routed_experts"], path, where), _token_ids(obj, obj, path, where), where
        )
    else:
        raise InvalidInputError(f"{where}: no routed_experts or choices", path)


def _check_npy_claim(fh: Any, available: int, path: Path, where: str) -> None:
    """An .npy header's shape must be backed by the bytes that follow it (checked before numpy allocates)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = reader(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{where}: not a readable .npy array ({exc})", path) from None
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > available - fh.tell():
        raise InvalidInputError(
            f"{where}: the .npy header claims shape {list(shape)} ({need} bytes) but only "
            f"{max(0, available - fh.tell())} bytes follow",
            path,
        )


def requests(path: Path) -> Iterator[Request]:
    """The requests in one file (any supported kind), in order."""
    suffix = path.suffix
    if suffix == ".npy":
        try:
            require_regular(path, ".npy file")
            with open(path, "rb") as fh:
                _check_npy_claim(fh, path.stat().st_size, path, "array")
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidInputError(f"not a readable .npy array ({exc})", path) from None
        yield Request(_as_tensor(arr, path, "array"), None, "array")
    elif suffix == ".npz":
        try:
            require_regular(path, ".npz file")
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as member:
                        _check_npy_claim(member, info.file_size, path, info.filename)
            with np.load(path, allow_pickle=False) as z:
                names = sorted(z.files, key=lambda s: natural_key(Path(s)))
                arrays = [(n, z[n]) for n in names]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise InvalidInputError(f"not a readable .npz archive ({exc})", path) from None
        for name, arr in arrays:
            yield Request(_as_tensor(arr, path, name), None, name)
    elif suffix in (".pt", ".pth"):
        obj = torch_load(path)
        items = obj if isinstance(obj, (list, tuple)) else [obj]
        for i, item in enumerate(items):
            yield Request(_as_tensor(item, path, f"item {i}"), None, f"item {i}")
    elif suffix == ".jsonl":
        lines = read_text_capped(path, JSON_MAX_BYTES, "JSONL file").splitlines()
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    obj = strict_json.loads(line)
                except strict_json.StrictJSONError as exc:
                    raise InvalidInputError(f"line {lineno}: {exc}", path) from None
                yield from requests_from_json(obj, path, f"line {lineno}")
    elif suffix == ".json":
        obj = strict_json.load_file(path, limit=JSON_MAX_BYTES, what="JSON file")
        for i, o in enumerate(obj if isinstance(obj, list) else [obj]):
            yield from requests_from_json(o, path, f"object {i}")
    else:
        raise InvalidInputError("unsupported file type for vllm (use .npy, .npz, .pt, .json or .jsonl)", path)


def is_placeholder(slab: torch.Tensor) -> bool:
    """[tokens, top_k] of one layer: all -1, or all 0 with top_k > 1 (a token never picks one expert "
    "twice)."""
    if bool((slab == -1).all()):
        return True
    return slab.shape[-1] > 1 and bool((slab == 0).all())


def import_vllm(sources: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    files = sorted(files_in(sources, _FILES, where=sources[0]), key=natural_key)
    stream = ((path, req) for path in files for req in requests(path))
    first = None
    pending: list[tuple[Path, Request]] = []
    for path, req in stream:
        pending.append((path, req))
        if req.routed.shape[0] > 0:
            first = (path, req)
            break
    if first is None:
        raise InvalidInputError("no routed tokens in any request", files[0])
    path0, req0 = first
    n_layers, top_k = req0.routed.shape[1], req0.routed.shape[2]
    all_ids = resolve_layer_ids(n_layers, options, path0)
    kept = [i for i in range(n_layers) if not is_placeholder(req0.routed[:, i, :])]
    if not kept:
        raise InvalidInputError(f"{req0.where}: every layer is empty (-1)", path0)
    if options.num_experts is None:
        raise MissingMetadataError(
            "number of experts unknown: vLLM routed experts do not record it; pass --num-experts", path0
        )
    num_experts = options.num_experts
    if options.top_k is not None and options.top_k != top_k:
        raise InvalidInputError(f"--top-k {options.top_k} contradicts routed_experts top_k={top_k}", path0)
    notes: list[str] = []
    dropped = [all_ids[i] for i in range(n_layers) if i not in kept]
    if dropped:
        notes.append(f"{layers_have(dropped)} no routing (dense placeholders; left out)")
    if options.layer_ids is None:
        notes.append("layer indices are MoE-layer ordinals as vLLM lists them; pass --layers to renumber")
    notes.append("one sequence per request")
    layers = [all_ids[i] for i in kept]
    meta = trace_metadata(
        "vllm",
        num_experts=num_experts,
        top_k=top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
    )
    has_ids: bool | None = None
    seq = 0
    with TraceSink(out, shard_tokens=options.shard_tokens) as sink:
        sink.begin(meta)

        def add(path: Path, req: Request) -> None:
            nonlocal has_ids, seq
            r = req.routed
            if r.shape[1:] != (n_layers, top_k):
                raise InvalidInputError(
                    f"{req.where}: routed_experts has shape {list(r.shape)}, expected [tokens, "
                    f"{n_layers}, {top_k}] "
                    "like the first request",
                    path,
                )
            n = r.shape[0]
            if n == 0:
                return
            for i in range(n_layers):
                if i not in kept and not is_placeholder(r[:, i, :]):
                    raise InvalidInputError(
                        f"{req.where}: layer {all_ids[i]} holds routing here but was empty in the "
                        "first request",
                        path,
                    )
            check_ids(r[:, kept, :], num_experts, path, req.where)
            batch = {
                f"layers.{all_ids[i]}.topk_ids": r[:, i, :].to(
                    torch.int16 if num_experts < 32768 else torch.int32
                )
                for i in kept
            }
            ids = req.token_ids
            if has_ids is None:
                has_ids = ids is not None
            if has_ids:
                if ids is None or len(ids) < n:
                    raise InvalidInputError(
                        f"{req.where}: token ids missing or shorter than its {n} routed tokens", path
                    )
                batch["tokens.input_ids"] = torch.tensor(ids[:n], dtype=torch.int64)
            batch["tokens.sequence_ids"] = torch.full((n,), seq, dtype=torch.int64)
            batch["tokens.positions"] = torch.arange(n, dtype=torch.int64)
            seq += 1
            sink.add(batch)

        for path, req in pending:
            add(path, req)
        for path, req in stream:
            add(path, req)
        return finish_per_token(
            sink, "vllm", out, layers=layers, num_experts=num_experts, top_k=top_k, files=files, notes=notes
        )
