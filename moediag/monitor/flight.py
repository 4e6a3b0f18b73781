"""The flight recorder: the last K steps' per-token routing, kept on the host, written as a v1 trace.

Every monitored step adds, per layer, the chosen experts (int16 while E fits, else int32) and their gate
weights (float32), optionally the router logits (float32), plus ``tokens.step``, ``tokens.sequence_ids``,
``tokens.positions`` and the padding mask. On CUDA the copies go into pinned host memory without
blocking (``non_blocking=True``): the host never waits for the device on a non-report step; the
buffers are read only when a trace is written, after a synchronisation.

Memory bound (stated and tested): the ring holds at most ``steps`` steps, and at most ``max_bytes`` bytes
(the oldest steps are dropped first; the newest step is always kept). One step of T tokens over L layers
with top-k takes ``T * (L * k * (id_bytes + 4) + L * 4 * E [with logits] + 8 + 4 + 8 + 1)`` bytes
(sequence id, position, step, padding mask).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moediag.record.batch import id_dtype
from moediag.trace.writer import TraceWriter

DEFAULT_MAX_BYTES = 256 << 20


@dataclass
class _Step:
    step: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    tokens: int = 0

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return total + (0 if self.valid is None else self.valid.numel())


def step_bytes(tokens: int, layers: int, top_k: int, num_experts: int, logits: bool) -> int:
    """Bytes one step takes in the ring (the bound in the module docstring)."""
    idb = torch.empty((), dtype=id_dtype(num_experts)).element_size()
    per_token = layers * top_k * (idb + 4) + (layers * 4 * num_experts if logits else 0) + 8 + 4 + 8 + 1
    return tokens * per_token


class FlightRecorder:
    """A bounded ring of the last ``steps`` steps' routing."""

    def __init__(self, steps: int, *, logits: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if steps < 1:
            raise ValueError(f"flight_recorder={steps}: must be at least 1 step")
        self.steps = steps
        self.logits = logits
        self.max_bytes = max_bytes
        self.ring: deque[_Step] = deque()
        self._open: _Step | None = None
        self._seq_base = 0

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.ring) + (0 if self._open is None else self._open.nbytes)

    def _host(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        t = t.detach()
        if t.device.type == "cuda":
            out = torch.empty(t.shape, dtype=dtype, pin_memory=True)
            out.copy_(t.to(dtype), non_blocking=True)
            return out
        return t.to("cpu", dtype, copy=True)

    def begin(self, step: int) -> None:
        self._open = _Step(step)

    def add_layer(
        self, layer: int, ids: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor | None, e: int
    ) -> None:
        if self._open is None:
            return
        t = self._open.tensors
        t[f"layers.{layer}.topk_ids"] = self._host(ids, id_dtype(e))
        t[f"layers.{layer}.topk_weights"] = self._host(weights, torch.float32)
        if self.logits and logits is not None:
            t[f"layers.{layer}.router_logits"] = self._host(logits, torch.float32)
        self._open.tokens = int(ids.shape[0])

    def end(self, valid: torch.Tensor | None, batch: int, seq: int) -> None:
        """Close the step: ``valid`` [B*S] masks padding; ``batch`` x ``seq`` is the token layout."""
        s = self._open
        self._open = None
        if s is None or not s.tensors:
            return
        n = s.tokens
        if batch * seq == n:
            s.tensors["tokens.sequence_ids"] = torch.arange(batch).repeat_interleave(seq) + self._seq_base
            s.tensors["tokens.positions"] = torch.arange(seq, dtype=torch.int32).repeat(batch)
            self._seq_base += batch
        else:
            s.tensors["tokens.sequence_ids"] = torch.full((n,), self._seq_base, dtype=torch.int64)
            s.tensors["tokens.positions"] = torch.arange(n, dtype=torch.int32)
            self._seq_base += 1
        s.tensors["tokens.step"] = torch.full((n,), s.step, dtype=torch.int64)
        if valid is not None and valid.numel() == n:
            s.valid = self._host(valid, torch.bool)
        self.ring.append(s)
        while len(self.ring) > self.steps or (len(self.ring) > 1 and self.nbytes > self.max_bytes):
            self.ring.popleft()

    def clear(self) -> None:
        self.ring.clear()
        self._open = None

    def write(self, path: str | os.PathLike[str], metadata: dict[str, str]) -> Path | None:
        """Write the ring as a v1 trace folder at ``path`` (padding left out). None when it is empty."""
        if not self.ring:
            return None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        names = set(self.ring[0].tensors)
        steps = [s for s in self.ring if set(s.tensors) == names]
        writer = TraceWriter(path, metadata)
        try:
            for s in steps:
                tensors = s.tensors
                if s.valid is not None and not bool(s.valid.all()):
                    tensors = {k: v[s.valid] for k, v in tensors.items()}
                writer.add(tensors)
        except BaseException:
            writer.abort()
            raise
        return writer.close()
