"""What a :class:`~moediag.monitor.Monitor` is given: its check settings and custom routers."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from moediag.checks import CheckConfig
from moediag.errors import UsageError
from moediag.live.alerts import Alert
from moediag.record.discover import RouterSite

Rules = CheckConfig | Mapping[str, Any] | str | os.PathLike[str] | None
OnAlert = str | Callable[[list[Alert]], Any]


def resolve_rules(rules: Rules) -> CheckConfig:
    """The check settings alerts use: a :class:`CheckConfig`, a dict of check keys, a config file
    (``pyproject.toml`` with ``[tool.moediag.check]``, ``moediag.toml``), or None for the file found from
    the working directory (as ``moediag check`` finds it) over the defaults."""
    from moediag.checks.config import load_config

    if isinstance(rules, CheckConfig):
        return rules
    if isinstance(rules, Mapping):
        try:
            return CheckConfig.from_values(rules)
        except KeyError as exc:
            raise UsageError(f"rules: unknown check key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise UsageError(f"rules: {exc}") from None
    if rules is None:
        return load_config()
    return load_config(rules)


def sites_from(model: nn.Module, routers: Any, top_k: int | None) -> list[RouterSite]:
    """Router sites for ``routers=``: modules, or a dict layer -> module, each with an [E, H] weight."""
    items: list[tuple[int, nn.Module]]
    if isinstance(routers, Mapping):
        items = [(int(k), v) for k, v in routers.items()]
    else:
        items = list(enumerate(routers))
    names = {id(m): n for n, m in model.named_modules()}
    sites = []
    for layer, module in items:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] < 2:
            raise UsageError(f"routers[{layer}]: a router needs a 2-D weight [num_experts, hidden]")
        k = top_k if top_k is not None else getattr(module, "top_k", None)
        sites.append(
            RouterSite(
                layer=layer,
                name=names.get(id(module), f"routers[{layer}]"),
                module=module,
                block=module,
                num_experts=int(weight.shape[0]),
                hidden_size=int(weight.shape[1]),
                top_k=k if isinstance(k, int) else None,
            )
        )
    return sorted(sites, key=lambda s: s.layer)
