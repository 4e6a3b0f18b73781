"""``Recorder``: record routing from inside a training or serving loop.

>>> import moediag                                                      # doctest: +SKIP
>>> with moediag.Recorder(model, "trace/", every=100, sample=0.25, max_bytes=2**30) as rec:
...     for batch in loader:
...         out = model(**batch)          # every forward is a step; every 100th is recorded
...         out.loss.backward()
...         opt.step(); opt.zero_grad()

Each top-level forward of ``model`` is one step (``rec.step``, which the loop may also assign, e.g.
``rec.step = global_step`` before each forward when it accumulates gradients). A step is recorded when
``step % every == 0``; of its real tokens a random fraction ``sample`` is kept. Recording stops for good
once the trace would pass ``max_bytes`` on disk (``rec.full`` becomes true; a warning says so).

Outcomes (``tokens.correct``, ``tokens.loss``): with ``outcomes="auto"`` they are recorded when the first
recorded forward is given ``labels`` (training); ``True`` always records them (the target of a token is
the next input id when no labels are given); ``False`` never (serving and generation, where the next token
is not known yet). When outcomes are recorded, tokens without a target (the last position of each sequence,
labels of -100, a padded next position) are left out of the trace, so every recorded token has a genuine
``correct`` and ``loss``. Padding (``attention_mask == 0``) is never recorded.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from moediag.errors import MoediagError, UnsupportedLayoutError, UsageError
from moediag.record.batch import IGNORE_INDEX, assemble, bytes_per_token
from moediag.record.capture import RouterHooks
from moediag.record.discover import RouterSite, find_routers, routing_info
from moediag.trace.schema import SCORE_FUNCTIONS
from moediag.trace.writer import TraceWriter

DEFAULT_MAX_BYTES = 1 << 30


class Recorder:
    """Hooks on ``model``'s routers that stream recorded steps into the trace folder ``path``."""

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike[str],
        *,
        every: int = 1,
        sample: float = 1.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        router_inputs: bool = False,
        outcomes: bool | str = "auto",
        domains: Sequence[str] | None = None,
        top_k: int | None = None,
        score_function: str | None = None,
        shard_tokens: int | None = None,
        keep_on_error: bool = True,
        seed: int = 0,
        model_name: str | None = None,
    ) -> None:
        if every < 1:
            raise UsageError(f"every={every}: must be at least 1")
        if not 0.0 < sample <= 1.0:
            raise UsageError(f"sample={sample}: must be in (0, 1]")
        if max_bytes < 1:
            raise UsageError(f"max_bytes={max_bytes}: must be positive")
        if outcomes not in (True, False, "auto"):
            raise UsageError(f"outcomes={outcomes!r}: expected True, False or 'auto'")
        if score_function is not None and score_function not in SCORE_FUNCTIONS:
            raise UsageError(
                f"score_function={score_function!r}: expected one of {', '.join(SCORE_FUNCTIONS)}"
            )
        self.model = model
        self.path = Path(path)
        self.every = every
        self.sample = sample
        self.max_bytes = max_bytes
        self.router_inputs = router_inputs
        self.outcomes = outcomes
        self.domains = list(domains) if domains is not None else None
        self.domain: str | None = self.domains[0] if self.domains else None
        self.keep_on_error = keep_on_error
        self.shard_tokens = shard_tokens
        self.model_name = model_name
        self._top_k = top_k
        self._score_function = score_function
        #: the index of the next forward (assignable)
        self.step = 0
        #: recording stopped because the trace reached ``max_bytes``
        self.full = False
        self.tokens_recorded = 0
        self.steps_recorded = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._sites: list[RouterSite] = []
        self._hooks: RouterHooks | None = None
        self._handles: list[Any] = []
        self._writer: TraceWriter | None = None
        self._meta: dict[str, str] | None = None
        self._paused = False
        self._recording_step: int | None = None
        self._with_outcomes: bool | None = None
        self._seq_base = 0
        self._bpt = 0
        self._overhead = 0
        self._result: Path | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Recorder:
        """Find the routers and install the hooks (``with`` does this)."""
        if self._started:
            return self
        self._sites = find_routers(self.model, top_k=self._top_k)
        if not self._sites:
            raise UnsupportedLayoutError(
                f"no MoE router found in {type(self.model).__name__}: nothing to record (a router is a "
                "gate/router module with an [E, H] weight beside an experts module)"
            )
        missing = [s.layer for s in self._sites if s.top_k is None]
        if missing:
            raise UsageError(f"top-k unknown for layers {missing}: pass Recorder(..., top_k=K)")
        info = routing_info(self.model, self._sites, score_function=self._score_function)
        name = self.model_name or getattr(getattr(self.model, "config", None), "name_or_path", None) or None
        extra: dict[str, Any] = {
            "recorder": "moediag.Recorder",
            "model_type": info.model_type,
            "routers": {str(s.layer): s.name for s in self._sites},
            "every": self.every,
            "sample": self.sample,
            **info.extra,
            **info.layer_overrides,
        }
        self._meta = info.metadata(model=str(name) if name else None, domains=self.domains, extra=extra)
        self._hooks = RouterHooks(self._sites, router_inputs=self.router_inputs)
        self._hooks.install()
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post, with_kwargs=True),
        ]
        self._started = True
        return self

    def close(self) -> Path | None:
        """Remove the hooks and finish the trace. Returns its path, or None when nothing was recorded."""
        self._remove_hooks()
        if self._result is not None:
            return self._result
        if self._writer is None or self.tokens_recorded == 0:
            if self._writer is not None:
                self._writer.abort()
            if self._started:
                warnings.warn(
                    f"moediag.Recorder: no step was recorded; {self.path} not written", stacklevel=2
                )
            return None
        self._result = self._writer.close()
        return self._result

    def abort(self) -> None:
        """Remove the hooks and discard everything recorded."""
        self._remove_hooks()
        if self._writer is not None:
            self._writer.abort()

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._hooks is not None:
            self._hooks.remove()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or self.keep_on_error:
            self.close()
        else:
            self.abort()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block are neither recorded nor counted as steps (e.g. evaluation)."""
        old, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = old

    @property
    def bytes_estimate(self) -> int:
        """Bytes the trace takes on disk so far (written shards plus what is pending)."""
        if self._writer is None:
            return 0
        pending = self._writer._pending_tokens
        return self._writer.bytes_written + (self._overhead + pending * self._bpt if pending else 0)

    # -- hooks ---------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self._hooks is not None
        if self._paused or self.full or self.step % self.every:
            self._recording_step = None
            return
        self._recording_step = self.step
        self._hooks.begin()

    def _post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        assert self._hooks is not None
        step = self._recording_step
        self._recording_step = None
        if not self._paused:
            self.step += 1
        if step is None:
            return
        captures = self._hooks.end()
        with torch.no_grad():
            self._record(step, captures, args, kwargs, output)

    def _record(
        self, step: int, captures: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            ids = args[0]
        mask = kwargs.get("attention_mask")
        labels = kwargs.get("labels")
        embeds = kwargs.get("inputs_embeds")
        if ids is not None:
            b, s = ids.shape[0], ids.shape[-1]
        elif isinstance(embeds, torch.Tensor):
            b, s = embeds.shape[0], embeds.shape[1]
        else:
            raise MoediagError("Recorder: the forward got neither input_ids nor inputs_embeds")
        n = b * s
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            mask = mask[:, -s:].detach().cpu().bool()
        else:
            mask = torch.ones(b, s, dtype=torch.bool)
        keep = mask.reshape(-1)
        positions = self._positions(kwargs, mask, b, s)
        if self._with_outcomes is None:
            self._with_outcomes = bool(
                self.outcomes is True or (self.outcomes == "auto" and labels is not None)
            )
        lm_logits = targets = None
        if self._with_outcomes:
            lm = getattr(output, "logits", None)
            if lm is None and isinstance(output, dict):
                lm = output.get("logits")
            if not isinstance(lm, torch.Tensor) or lm.shape[:2] != (b, s):
                raise MoediagError(
                    "Recorder: outcomes need the model's logits for every position (pass outcomes=False)"
                )
            src = labels if isinstance(labels, torch.Tensor) else ids
            if src is None:
                raise MoediagError("Recorder: outcomes need input_ids or labels (pass outcomes=False)")
            src = src.detach().cpu().to(torch.int64)
            tgt = torch.full((b, s), IGNORE_INDEX, dtype=torch.int64)
            tgt[:, :-1] = src[:, 1:]
            tgt[:, :-1][~mask[:, 1:]] = IGNORE_INDEX
            targets = tgt.reshape(-1)
            keep = keep & (targets != IGNORE_INDEX)
            lm_logits = lm.detach().reshape(n, -1)
        rows = torch.nonzero(keep).squeeze(1)
        if self.sample < 1.0 and rows.numel():
            rows = rows[torch.rand(rows.shape[0], generator=self._gen) < self.sample]
        seq = torch.arange(b).repeat_interleave(s) + self._seq_base
        self._seq_base += b
        domain = None
        if self.domains is not None:
            if self.domain not in self.domains:
                raise UsageError(f"Recorder.domain={self.domain!r} is not one of {self.domains}")
            domain = self.domains.index(self.domain)
        tensors = assemble(
            captures,
            [site.layer for site in self._sites],
            rows=rows,
            input_ids=None if ids is None else ids.detach().cpu().reshape(-1),
            positions=positions,
            sequence_ids=seq,
            lm_logits=lm_logits,
            targets=targets,
            step=step,
            domain=domain,
            router_inputs=self.router_inputs,
        )
        self._add(tensors, step)

    @staticmethod
    def _positions(kwargs: dict[str, Any], mask: torch.Tensor, b: int, s: int) -> torch.Tensor:
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == s:
            return pos.detach().cpu().reshape(-1, s).expand(b, s).reshape(-1)
        cache_pos = kwargs.get("cache_position")
        if isinstance(cache_pos, torch.Tensor) and cache_pos.shape[-1] == s:
            return cache_pos.detach().cpu().reshape(1, s).expand(b, s).reshape(-1)
        return (mask.long().cumsum(-1) - 1).clamp_min(0).reshape(-1)

    def _add(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        n = next(iter(tensors.values())).shape[0]
        if self._writer is None:
            assert self._meta is not None
            self._bpt = max(bytes_per_token(tensors), 1)
            consts = sum(b.numel() * 4 for b in (s.selection_bias() for s in self._sites) if b is not None)
            header = (
                8
                + 2 * len(json.dumps(self._meta))
                + sum(len(k) + 128 for k in tensors)
                + 160 * len(self._sites)
                + 64
            )
            self._overhead = header + consts
            shard = self.shard_tokens or max(1024, min(65_536, (256 << 20) // self._bpt))
            self._writer = TraceWriter(self.path, self._meta, shard_tokens=shard)
        w = self._writer
        start_new = w._pending_tokens == 0
        committed = w.bytes_written + (0 if start_new else self._overhead + w._pending_tokens * self._bpt)
        room = self.max_bytes - committed - self._overhead
        fit = max(0, room // self._bpt) if room > 0 else 0
        if fit < n:
            self.full = True
            warnings.warn(
                f"moediag.Recorder: {self.path} reached max_bytes={self.max_bytes}; "
                f"recording stopped at step {step}",
                stacklevel=3,
            )
            if fit == 0:
                return
            tensors = {k: v[:fit] for k, v in tensors.items()}
            n = fit
        if n == 0:
            return
        for s in self._sites:  # the bias may move during training: each shard holds its latest value
            bias = s.selection_bias()
            if bias is not None:
                w.set_constant(f"layers.{s.layer}.selection_bias", bias)
        w.add(tensors)
        self.tokens_recorded += n
        self.steps_recorded += 1
