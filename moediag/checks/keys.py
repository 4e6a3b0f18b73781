"""What a setting of the gate is (:class:`Key`) and what a rule is (:class:`Rule`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moediag.checks.config import CheckConfig

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from moediag.checks.gate import Direction

#: What a rule reads from one row: (value, None) or (None, why the figure is absent).
Extractor = Callable[[Mapping[str, Any], "CheckConfig"], tuple[float | None, str | None]]


@dataclass(frozen=True)
class Key:
    """One setting of the gate: a config key (``max_vio``) and a flag (``--max-vio``)."""

    name: str
    type: Literal["float", "int", "bool", "str", "layers"]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    #: an upper bound (a claimed value past it is refused before anything is computed from it)
    maximum: float | None = None
    #: ``minimum`` itself is refused (a capacity factor of 0 drops everything)
    exclusive: bool = False
    #: a rule's threshold: may be ``off`` (``false`` in TOML) to disable the rule
    is_threshold: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Rule:
    """A rule: a figure, how it is compared, where it comes from and how layers aggregate to a model."""

    key: Key
    figure: str
    direction: Direction
    precision: int
    formula: str
    kinds: frozenset[str]
    #: how ``--scope model`` combines the selected layers' figures
    model_agg: Literal["mean", "sum", "max", "min"]
    extract: Extractor
    #: the figure exists only for the whole model (paths cross layers)
    model_only: bool = False

    @property
    def name(self) -> str:
        return self.key.name
