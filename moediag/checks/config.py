"""A check configuration: every key's value and where it came from.

Settings come from defaults < a config file < command-line flags.

The file is, in order:

1. ``--config FILE`` (a ``pyproject.toml`` with ``[tool.moediag.check]``, or any TOML file with
   ``[tool.moediag.check]`` or ``[check]``);
2. otherwise the first directory from the working directory upward that has a ``moediag.toml``
   (its ``[check]`` table) or a ``pyproject.toml`` with a ``[tool.moediag]`` table (``[tool.moediag.check]``
   for check; moediag.options reads the others); ``moediag.toml``
   wins within one directory. The search stops at the repository root (a directory holding ``.git``).

Keys and their types come from :data:`moediag.checks.KEYS`; an unknown key or a value of the wrong type is
a :class:`~moediag.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moediag.checks.gate import decimals
from moediag.checks.keys import Key, Rule
from moediag.checks.rules import KEYS
from moediag.errors import ConfigError, UsageError
from moediag.io.config_file import find_config, read_toml

MAX_LAYER = 9999


class ConfigValueError(ValueError):
    """A value that doesn't fit its key; the caller names the file or flag."""


_LAYERS_RE = re.compile(r"^\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?$")


def parse_layers(spec: str | Iterable[int]) -> tuple[int, ...]:
    """``"0,3-5"`` -> ``(0, 3, 4, 5)``; a list of ints is taken as it is."""
    if isinstance(spec, str):
        out: set[int] = set()
        for part in spec.split(","):
            m = _LAYERS_RE.match(part)
            if not m:
                raise ConfigValueError(f"layer selector {spec!r}: expected numbers and ranges like '0,3-5'")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigValueError(f"layer selector {spec!r}: range {lo}-{hi} runs backwards")
            if hi > MAX_LAYER:
                raise ConfigValueError(
                    f"layer selector {spec!r}: layer {hi} is past the limit of {MAX_LAYER}"
                )
            out.update(range(lo, hi + 1))
        return tuple(sorted(out))
    values = list(spec)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in values):
        raise ConfigValueError("expected a list of non-negative layer numbers or a string like '0,3-5'")
    if any(x > MAX_LAYER for x in values):
        raise ConfigValueError(f"layer {max(values)} is past the limit of {MAX_LAYER}")
    return tuple(sorted(set(values)))


def coerce(key: Key, value: Any) -> Any:
    """Check and convert one value for ``key``: TOML values as they are, or flag text."""
    if key.is_threshold and (
        value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none"))
    ):
        return None
    if key.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigValueError(f"expected true or false, got {value!r}")
    if key.type == "str":
        if not isinstance(value, str):
            raise ConfigValueError(f"expected a string, got {value!r}")
        if key.choices and value not in key.choices:
            raise ConfigValueError(f"expected one of {', '.join(key.choices)}, got {value!r}")
        return value
    if key.type == "layers":
        if not isinstance(value, (str, list, tuple)):
            raise ConfigValueError(f"expected a string like '0,3-5' or a list of layers, got {value!r}")
        return parse_layers(value)
    number: float | int
    if isinstance(value, bool):
        raise ConfigValueError(f"expected a number{' or off' if key.is_threshold else ''}, got {value!r}")
    if isinstance(value, str):
        try:
            number = int(value) if key.type == "int" else float(value)
        except ValueError:
            raise ConfigValueError(
                f"expected {'an integer' if key.type == 'int' else 'a number'}"
                f"{' or off' if key.is_threshold else ''}, got {value!r}"
            ) from None
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise ConfigValueError(f"expected a number, got {value!r}")
    if key.type == "int":
        if isinstance(number, float):
            if not number.is_integer():
                raise ConfigValueError(f"expected an integer, got {value!r}")
            number = int(number)
    else:
        number = float(number)
    if not math.isfinite(number):
        raise ConfigValueError(f"expected a finite number, got {value!r}")
    if key.minimum is not None and (number <= key.minimum if key.exclusive else number < key.minimum):
        raise ConfigValueError(f"must be {'>' if key.exclusive else '>='} {key.minimum:g}, got {value!r}")
    if key.maximum is not None and number > key.maximum:
        raise ConfigValueError(f"must be <= {key.maximum:g}, got {value!r}")
    return number


@dataclass
class CheckConfig:
    """Resolved settings: every key of :data:`KEYS` with its value and where it came from.

    ``sources[key]`` is ``"default"``, a config file's path, or ``"flag"``.
    """

    values: dict[str, Any] = field(default_factory=lambda: {k: key.default for k, key in KEYS.items()})
    sources: dict[str, str] = field(default_factory=lambda: dict.fromkeys(KEYS, "default"))
    file: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def set(self, name: str, value: Any, source: str) -> None:
        """Set ``name`` from ``source`` after checking it (raises KeyError / ConfigValueError)."""
        key = KEYS[name]
        self.values[name] = coerce(key, value)
        self.sources[name] = source

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "python") -> CheckConfig:
        config = cls()
        for name, value in values.items():
            if name not in KEYS:
                raise KeyError(name)
            config.set(name, value, source)
        return config

    def explicit(self, name: str) -> bool:
        return self.sources[name] != "default"

    def precision(self, rule: Rule) -> int:
        """The rule's precision (or the ``precision`` key), widened to the decimals the threshold shows."""
        base = self.values["precision"] if self.values["precision"] is not None else rule.precision
        threshold = self.values[rule.name]
        return max(int(base), decimals(threshold)) if threshold is not None else int(base)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values.items()}


# --------------------------------------------------------------------------------------------------
# Results


SECTION = "[tool.moediag.check]"


def _tool_table(doc: Mapping[str, Any]) -> Any:
    tool = doc.get("tool")
    if isinstance(tool, Mapping):
        moediag = tool.get("moediag")
        if isinstance(moediag, Mapping):
            return moediag.get("check")
    return None


def check_table(path: Path, doc: Mapping[str, Any], *, required: bool) -> Mapping[str, Any] | None:
    """The check settings in a parsed TOML file (``[tool.moediag.check]``, or ``[check]`` outside
    pyproject.toml)."""
    table = _tool_table(doc)
    where = SECTION
    if table is None and path.name != "pyproject.toml":
        table = doc.get("check")
        where = "[check]"
    if table is None:
        if required:
            raise ConfigError(
                f"no {SECTION} table" + ("" if path.name == "pyproject.toml" else " or [check] table"), path
            )
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table", path)
    return table


def apply_table(config: CheckConfig, table: Mapping[str, Any], path: Path) -> None:
    """Validate and apply a file's keys (ConfigError names the file and the key)."""
    for name, value in table.items():
        if name not in KEYS:
            close = difflib.get_close_matches(name.replace("-", "_"), list(KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(KEYS)}"
            raise ConfigError(f"unknown key {name!r} in the check settings{hint}", path)
        try:
            config.set(name, value, str(path))
        except ConfigValueError as exc:
            raise ConfigError(f"key {name!r}: {exc}", path) from None


def apply_flags(config: CheckConfig, flags: Mapping[str, Any]) -> None:
    """Apply command-line values (None = not given). A bad value is a UsageError naming the flag."""
    for name, value in flags.items():
        if value is None:
            continue
        try:
            config.set(name, value, "flag")
        except ConfigValueError as exc:
            raise UsageError(f"{KEYS[name].flag}: {exc}") from None


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    *,
    required: bool = True,
) -> CheckConfig:
    """Defaults, then the config file (given or found), then flags. ``required``: a given file must hold a
    check table (False for the commands that only take the verdict's thresholds from it)."""
    config = CheckConfig()
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
        table = check_table(path, read_toml(path), required=required)
    else:
        path = find_config(cwd)
        table = None if path is None else check_table(path, read_toml(path), required=False)
    if path is not None and table is not None:
        config.file = str(path)
        apply_table(config, table, path)
    apply_flags(config, flags or {})
    return config
