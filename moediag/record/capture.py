"""Forward hooks on router modules: per-layer router logits, chosen experts and router inputs.

Hooks only record while armed (between the start and the end of one top-level forward), so the
recomputation that gradient checkpointing runs during backward is not recorded twice.

Logits come from the router's own output when it returns them (a float tensor ``[T, E]`` first in its
output, as every transformers 5.x router and every ``nn.Linear`` gate does). Where a router returns only
its top-k choice (DeepSeek-V3-style remote-code gates return ``(topk_idx, topk_weight, aux_loss)``), or
returns probabilities instead of logits (rows that are non-negative and sum to 1), the logits are computed
from the router's input and weight: ``F.linear(x.float(), W.float(), b)``. The chosen experts are taken
from the first integer tensor ``[T, k]`` in the output, when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from moediag.errors import MoediagError
from moediag.record.discover import RouterSite


@dataclass
class LayerCapture:
    """What one router produced during one forward (all on the CPU)."""

    logits: torch.Tensor  # [T, E] float32
    topk_ids: torch.Tensor | None  # [T, k] int
    router_input: torch.Tensor | None  # [T, H]


@dataclass
class _Pending:
    logits: list[torch.Tensor] = field(default_factory=list)
    ids: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for t in output if isinstance(t, torch.Tensor)]
    return []


def _looks_like_probabilities(t: torch.Tensor) -> bool:
    if t.numel() == 0 or bool((t < 0).any()):
        return False
    return bool(torch.allclose(t.sum(-1), torch.ones(t.shape[0], dtype=t.dtype, device=t.device), atol=1e-3))


def _router_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    x = kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor):
        return x
    for v in kwargs.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    return None


class RouterHooks:
    """Hooks on a set of routers; ``begin()`` arms them, ``end()`` returns what one forward produced."""

    def __init__(self, sites: list[RouterSite], *, router_inputs: bool = False) -> None:
        self.sites = sites
        self.router_inputs = router_inputs
        self.armed = False
        #: where each layer's logits came from: "output" or "recomputed" (decided at the first call)
        self.logits_source: dict[int, str] = {}
        self._pending: dict[int, _Pending] = {}
        self._handles: list[Any] = []

    def install(self) -> None:
        if self._handles:
            return
        for site in self.sites:
            self._handles.append(site.module.register_forward_hook(self._make_hook(site), with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.armed = False

    def begin(self) -> None:
        self._pending = {s.layer: _Pending() for s in self.sites}
        self.armed = True

    def cancel(self) -> None:
        self.armed = False
        self._pending = {}

    def end(self) -> dict[int, LayerCapture]:
        """Disarm and return the captures of every router that ran (on the CPU)."""
        self.armed = False
        out: dict[int, LayerCapture] = {}
        for layer, p in self._pending.items():
            if not p.logits:
                continue
            out[layer] = LayerCapture(
                logits=torch.cat(p.logits).cpu(),
                topk_ids=torch.cat(p.ids).cpu() if len(p.ids) == len(p.logits) else None,
                router_input=torch.cat(p.inputs).cpu() if p.inputs else None,
            )
        self._pending = {}
        return out

    def _make_hook(self, site: RouterSite) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not self.armed:
                return
            with torch.no_grad():
                self._capture(site, args, kwargs, output)

        return hook

    def _capture(self, site: RouterSite, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        out = router_output(site, args, kwargs, output, self.logits_source.get(site.layer))
        self.logits_source[site.layer] = out.source
        p = self._pending[site.layer]
        p.logits.append(out.logits.detach().to("cpu", torch.float32, copy=True))
        if out.ids is not None:
            p.ids.append(out.ids.detach().to("cpu", copy=True))
        if self.router_inputs:
            p.inputs.append(out.router_input.to("cpu", copy=True))


@dataclass
class RouterOutput:
    """One router call, on the model's device: its logits, its chosen experts (when it returns them) and
    its input, flattened to ``[T, ...]``."""

    logits: torch.Tensor  # [T, E] (the router's dtype)
    ids: torch.Tensor | None  # [T, k] integer
    router_input: torch.Tensor  # [T, H]
    source: str  # "output" or "recomputed"


def router_output(
    site: RouterSite, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, source: str | None
) -> RouterOutput:
    """What a router hook sees, as logits and ids (the module docstring says how). ``source`` is where the
    logits came from on an earlier call of this router; None decides it now, which reads the values once
    (a host-device synchronisation on the first call only)."""
    x = _router_input(args, kwargs)
    if x is None:
        raise MoediagError(f"router {site.name}: could not find its input tensor")
    x = x.detach().reshape(-1, site.hidden_size)
    n, e = x.shape[0], site.num_experts
    tensors = _tensors(output)
    logits = None
    for t in tensors:
        if t.is_floating_point() and t.shape[-1] == e and t.numel() == n * e:
            logits = t.detach().reshape(n, e)
            break
    if source is None:
        source = (
            "output" if logits is not None and not _looks_like_probabilities(logits.float()) else "recomputed"
        )
    if source == "recomputed" or logits is None:
        w = site.weight.detach().float()
        b = site.bias
        logits = F.linear(x.float(), w, None if b is None else b.detach().float())
    ids = None
    for t in tensors:
        if not t.is_floating_point() and t.dtype != torch.bool and t.dim() == 2 and t.shape[0] == n:
            ids = t.detach()
            break
    return RouterOutput(logits=logits, ids=ids, router_input=x, source=source)
