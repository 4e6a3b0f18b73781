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

import torch
from safetensors.torch import load_file, save_file

from moediag.io.atomic import make_parent, publish, write_atomic_with
from moediag.io.paths import OutputError, is_trace_folder, output_error
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
    ``-o`` can't delete data moediag did not write (moediag.io.paths.check_output says so up front)."""
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


class TraceWriter:
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

    def set_constant(self, name: str, tensor: torch.Tensor) -> None:
        if _is_per_token(name):
            raise ValueError(f"{name} is a per-token tensor; pass it to add()")
        self._constants[name] = tensor.detach().cpu().contiguous()

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
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
        n = sizes.pop()
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

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
