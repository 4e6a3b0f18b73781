"""Writing v1 traces atomically: a temp file (or folder) beside the target, then a rename.

``write_trace`` writes one file from tensors in memory. ``TraceWriter`` streams token batches into
numbered shards of a folder, so recorders and importers never hold a whole trace; the folder appears
under its final name only when ``close()`` succeeds, so a failed run leaves no partial output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file

from moediag.io.atomic import make_parent, publish, write_atomic_with
from moediag.io.outputs import OutputError, is_trace_folder, output_error
from moediag.io.safetensors_file import SafetensorsFile
from moediag.trace.schema import LAYER_RE, PER_TOKEN_LAYER_TENSORS, TOKEN_RE


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _validate_before_publishing(tmp: Path, target: Path) -> None:
    """The reader's and the analysis's rules on a finished temp output (moediag.trace.reader.validate_trace):
    what does not pass is never published under ``target``."""
    from moediag.errors import InvalidInputError
    from moediag.trace.reader import validate_trace

    try:
        validate_trace(tmp)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"not written, the result would not be a valid trace: {exc.message}", target
        ) from None


def write_trace(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    validate: bool = False,
) -> Path:
    """Write one trace file atomically. Returns the path written. ``validate`` checks the result with the
    reader's rules first (importers: data from elsewhere)."""
    target = Path(path)

    def write(tmp: str) -> None:
        _save(tensors, Path(tmp), metadata, target)
        if validate:
            _validate_before_publishing(Path(tmp), target)

    write_atomic_with(target, write)
    return target


def _is_per_token(name: str) -> bool:
    m = LAYER_RE.match(name)
    if m:
        return m.group(2) in PER_TOKEN_LAYER_TENSORS
    return bool(TOKEN_RE.match(name))


def _save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str], target: Path) -> None:
    """``save_file`` with write failures (ENOSPC, EACCES, ...) as one line naming the trace ``target``."""
    try:
        save_file(_contiguous(tensors), str(path), metadata=dict(metadata))
    except OSError as exc:
        raise output_error(exc, target) from None
    except Exception as exc:  # safetensors reports I/O failures as its own SafetensorError
        if type(exc).__name__ != "SafetensorError":
            raise
        raise OutputError(f"cannot write: {exc}", target) from None


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place, replacing what was there only after it is complete.

    Only a moediag trace folder (or an empty one) is ever replaced: anything else is refused, so a wrong
    ``-o`` can't delete data moediag did not write (moediag.io.outputs.check_output says so up front)."""
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_dir() or not is_trace_folder(target):
            raise OutputError("exists and is not a moediag trace folder; refusing to replace it", target)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        publish(tmp, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        publish(tmp, target)


_W = TypeVar("_W", bound="_BatchRules")


class _BatchRules:
    """What both writers share: constants are not per-token, every batch has the first batch's tensors
    and one token count; a temporary place discarded on abort (and on an exception in ``with``)."""

    _constants: dict[str, torch.Tensor]
    _names: set[str] | None
    _tmp: Path
    _closed: bool

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def set_constant(self, name: str, tensor: torch.Tensor) -> None:
        if _is_per_token(name):
            raise ValueError(f"{name} is a per-token tensor; pass it to add()")
        self._constants[name] = tensor.detach().cpu().contiguous()

    def _check_batch(self, tensors: Mapping[str, torch.Tensor]) -> int:
        """The batch's token count, after checking it against the rules above."""
        names = set(tensors)
        for name in names:
            if not _is_per_token(name):
                raise ValueError(f"{name} is not a per-token tensor; use set_constant()")
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(f"batch tensors {sorted(names ^ self._names)} differ from the first batch's")
        sizes = {t.shape[0] for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"batch tensors disagree on the token count: {sorted(sizes)}")
        return sizes.pop()


class TraceWriter(_BatchRules):
    """Stream token batches into a folder of shards ``part-00000.safetensors``, ...

    >>> with TraceWriter("trace/", metadata) as w:        # doctest: +SKIP
    ...     w.add({"layers.0.router_logits": logits, "tokens.sequence_ids": seq})
    ...     w.set_constant("layers.0.selection_bias", bias)

    Every batch must carry the same per-token tensor names. Constant tensors (``selection_bias``,
    ``expert_counts``) are written into every shard (shards must hold the same names), also into shards
    flushed before ``set_constant`` was called; ``expert_counts`` are summed over shards by the reader, so
    only the first shard holds the counts and later ones an empty ``[0, E]`` tensor. ``shard_tokens``
    bounds memory: a shard is flushed when it holds that many tokens.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, str],
        *,
        shard_tokens: int = 65_536,
        validate: bool = False,
    ) -> None:
        self.path = Path(path)
        self.validate = validate
        self.metadata = dict(metadata)
        self.shard_tokens = shard_tokens
        make_parent(self.path)
        try:
            self._tmp = Path(
                tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            )
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._pending_tokens = 0
        self._constants: dict[str, torch.Tensor] = {}
        self._names: set[str] | None = None
        self._shards = 0
        self.tokens_written = 0
        self.bytes_written = 0
        self._closed = False

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        n = self._check_batch(tensors)
        for name, t in tensors.items():
            self._pending.setdefault(name, []).append(t.detach().cpu())
        self._pending_tokens += n
        if self._pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write what is pending as one shard."""
        if not self._pending_tokens and (self._shards or not self._constants):
            return
        tensors = {k: torch.cat(v) for k, v in self._pending.items()}
        tensors.update(self._shard_constants(self._shards))
        shard = self._tmp / f"part-{self._shards:05d}.safetensors"
        _save(tensors, shard, self.metadata, self.path)
        self.bytes_written += shard.stat().st_size
        self.tokens_written += self._pending_tokens
        self._shards += 1
        self._pending.clear()
        self._pending_tokens = 0

    def _shard_constants(self, index: int) -> dict[str, torch.Tensor]:
        """The constant tensors of shard ``index`` (counts only in the first shard: the reader sums them)."""
        later = index > 0
        return {
            k: (v[:0] if later and k.endswith(".expert_counts") else v) for k, v in self._constants.items()
        }

    def _backfill_constants(self) -> None:
        """Add constants set after a shard was written to that shard (one shard in memory at a time)."""
        for index in range(self._shards):
            shard = self._tmp / f"part-{index:05d}.safetensors"
            constants = self._shard_constants(index)
            missing = set(constants) - set(SafetensorsFile(shard).tensors)
            if missing:
                tensors = load_file(str(shard))
                tensors.update({k: constants[k] for k in missing})
                self.bytes_written -= shard.stat().st_size
                _save(tensors, shard, self.metadata, self.path)
                self.bytes_written += shard.stat().st_size

    def close(self) -> Path:
        """Flush and move the folder into place. Returns the final path."""
        if self._closed:
            return self.path
        self.flush()
        if self._shards == 0:
            self.abort()
            raise ValueError("nothing was written: no tokens and no constant tensors")
        try:
            self._backfill_constants()
            if self.validate:
                _validate_before_publishing(self._tmp, self.path)
            replace_dir(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path


#: safetensors' dtype names
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class SingleFileTraceWriter(_BatchRules):
    """:class:`TraceWriter`'s interface, writing one ``.safetensors`` file without holding the trace.

    Each per-token tensor's bytes are appended to its own spill file in a temporary folder beside the
    target as batches arrive; ``close()`` writes the safetensors header (shapes and offsets are known by
    then) and copies the spill files after it, into a temp file that is renamed into place. Memory is one
    batch plus a copy buffer, whatever the number of tokens; a failure leaves nothing at the target.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Mapping[str, str], **_: object) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; a .safetensors output is one file")
        self.metadata = dict(metadata)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        self._spills: dict[str, tuple[torch.dtype, list[int], Path]] = {}
        self._constants: dict[str, torch.Tensor] = {}
        self._names: set[str] | None = None
        self.tokens_written = 0
        self.bytes_written = 0
        self._closed = False

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        n = self._check_batch(tensors)
        for name, t in tensors.items():
            t = t.detach().cpu().contiguous()
            if name not in self._spills:
                self._spills[name] = (t.dtype, [0, *t.shape[1:]], self._tmp / f"{len(self._spills)}.bin")
            dtype, shape, spill = self._spills[name]
            if t.dtype != dtype or list(t.shape[1:]) != shape[1:]:
                raise ValueError(f"{name}: batch of {t.dtype} {list(t.shape)} after {dtype} {shape}")
            with spill.open("ab") as f:
                f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            shape[0] += t.shape[0]
        self.tokens_written += n

    def close(self) -> Path:
        if self._closed:
            return self.path
        if not self._spills and not self._constants:
            self.abort()
            raise ValueError("nothing was written: no tokens and no constant tensors")
        import json

        header: dict[str, object] = {"__metadata__": self.metadata}
        parts: list[Path | bytes] = []
        offset = 0
        for name, (dtype, shape, spill) in self._spills.items():
            size = spill.stat().st_size if spill.exists() else 0
            header[name] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
            parts.append(spill)
            offset += size
        for name, t in self._constants.items():
            data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
            header[name] = {
                "dtype": _DTYPES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + len(data)],
            }
            parts.append(data)
            offset += len(data)
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the header is padded to 8 bytes, as safetensors writes it

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                out.write(len(text).to_bytes(8, "little"))
                out.write(text)
                for part in parts:
                    if isinstance(part, bytes):
                        out.write(part)
                    elif part.exists():
                        with part.open("rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)

        try:
            write_atomic_with(self.path, write)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.bytes_written = self.path.stat().st_size
        self._closed = True
        return self.path


def trace_writer(
    path: str | os.PathLike[str], metadata: Mapping[str, str], *, shard_tokens: int = 65_536
) -> TraceWriter | SingleFileTraceWriter:
    """The one rule for outputs: a name ending in ``.safetensors`` is one file, anything else a folder of
    shards. Both stream (memory bounded by a batch)."""
    if Path(path).suffix == ".safetensors":
        return SingleFileTraceWriter(path, metadata)
    return TraceWriter(path, metadata, shard_tokens=shard_tokens)
