"""Every default of moediag in one table, and where each setting of a run comes from.

Precedence (lowest first): the default here < ``[tool.moediag]`` (settings shared by every command) <
``[tool.moediag.check]`` (for the settings ``check`` shares, so ``inspect`` and ``check`` never disagree
under one config file) < ``[tool.moediag.<command>]`` < a command-line flag or library argument. The file
is the one ``moediag check`` uses (:func:`moediag.io.config_file.find_config`: ``moediag.toml`` or
``pyproject.toml`` from the working directory upward, or ``--config FILE``); in ``moediag.toml`` the tables
are top-level (``[inspect]``, ``[check]``) and shared settings sit at the top.

This module imports nothing heavy (no torch): the CLI reads its defaults for ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: capacity factors every analysis measures drop rates at
CAPACITY_FACTORS: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0)
#: fraction of each expert's rows the checkpoint redundancy screen reads (``--sample``); 1 reads everything
DEFAULT_SAMPLE = 1 / 32
#: commands that read settings from the config file
COMMANDS = ("inspect", "report", "plot", "check", "replay")


@dataclass(frozen=True)
class Setting:
    """One setting: its name (config key and library argument), default, type and the commands using it."""

    name: str
    default: Any
    type: str  # "float" | "int" | "bool"
    help: str
    commands: tuple[str, ...]
    minimum: float | None = None
    #: True when ``check`` has the same setting (its ``[tool.moediag.check]`` value applies to the others)
    shared_with_check: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "cold_eps",
        0.1,
        "float",
        "An expert is cold when its share < cold_eps / E.",
        ("inspect", "report", "plot", "check"),
        minimum=0,
        shared_with_check=True,
    ),
    Setting(
        "capacity_group",
        4096,
        "int",
        "Tokens per capacity group when the trace has no sequence ids.",
        ("inspect", "report", "plot", "check", "replay"),
        minimum=1,
    ),
    Setting(
        "min_capacity",
        0,
        "int",
        "Capacity floor per expert and group (DeepSpeed's min_capacity; 0 = none).",
        ("inspect", "report", "plot", "check"),
        minimum=0,
        shared_with_check=True,
    ),
    Setting(
        "capacity_factor",
        1.25,
        "float",
        "Capacity factor at which check's max_drop_rate is measured.",
        ("check",),
        minimum=0,
        shared_with_check=True,
    ),
    Setting(
        "redundancy_threshold",
        0.99,
        "float",
        "Checkpoints: cosine above which two experts are duplicates.",
        ("inspect", "report", "check"),
        minimum=0,
    ),
    Setting(
        "weights",
        True,
        "bool",
        "Checkpoints: read weights for router and redundancy diagnostics.",
        ("inspect", "report", "check"),
    ),
    Setting(
        "chunk_tokens",
        None,
        "int",
        "Tokens read per chunk (memory bound; default: from the trace's shards).",
        ("inspect", "report", "plot", "check", "replay"),
        minimum=1,
    ),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}


def default(name: str) -> Any:
    """The default of one setting (KeyError for an unknown name)."""
    return DEFAULTS[name]


@dataclass
class Resolved:
    """The settings of one run: values, where each came from (``default``, ``FILE [table]``, ``flag``)."""

    command: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    file: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def _coerce(setting: Setting, value: Any, where: str, path: Path) -> Any:
    from moediag.errors import ConfigError

    kind = setting.type
    ok = (
        isinstance(value, bool)
        if kind == "bool"
        else isinstance(value, int) and not isinstance(value, bool)
        if kind == "int"
        else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok:
        raise ConfigError(f"{where}: {setting.name} must be {'a number' if kind == 'float' else kind}", path)
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(f"{where}: {setting.name} must be at least {setting.minimum:g}", path)
    return float(value) if kind == "float" else value


def _tables(path: Path, doc: Mapping[str, Any], command: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The tables that apply to ``command`` in a parsed TOML file, lowest precedence first."""
    if path.name == "pyproject.toml" or "tool" in doc:
        tool = doc.get("tool")
        root = tool.get("moediag") if isinstance(tool, Mapping) else None
        prefix = "tool.moediag"
    else:
        root, prefix = doc, ""
    if not isinstance(root, Mapping):
        return []
    out: list[tuple[str, Mapping[str, Any]]] = [(f"[{prefix}]" if prefix else "top level", root)]
    names = ["check"] if command != "check" else []
    names.append(command)
    for name in names:
        table = root.get(name)
        if isinstance(table, Mapping):
            out.append((f"[{prefix + '.' if prefix else ''}{name}]", table))
    return out


def resolve(
    command: str,
    given: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Resolved:
    """The settings of ``command``: defaults < config file < ``given`` (flags / arguments; None = not set).

    In ``[tool.moediag]`` only settings are read (sub-tables are the commands'); in a command's table an
    unknown key is an error for ``inspect``, ``report`` and ``plot`` (``check`` validates its own table).
    """
    from moediag.errors import ConfigError
    from moediag.io.config_file import find_config, read_toml

    out = Resolved(command)
    for s in SETTINGS:
        if command in s.commands:
            out.values[s.name] = s.default
            out.sources[s.name] = "default"
    path = Path(config_file) if config_file is not None else find_config(cwd)
    if path is not None:
        doc = read_toml(path)
        for where, table in _tables(path, doc, command):
            is_shared = where in ("[tool.moediag]", "top level")
            is_check = where.endswith("check]") and command != "check"
            for key, value in table.items():
                if isinstance(value, Mapping):
                    continue  # a command's table
                setting = BY_NAME.get(key)
                if setting is None or command not in setting.commands:
                    if is_shared or is_check or command == "check":
                        continue  # another command's setting, or check's own keys (config.py checks them)
                    raise ConfigError(f"{where}: unknown key {key!r} for moediag {command}", path)
                if is_check and not setting.shared_with_check:
                    continue
                out.values[key] = _coerce(setting, value, where, path)
                out.sources[key] = f"{path} {where}"
                out.file = str(path)
    for key, value in (given or {}).items():
        if value is not None and key in out.values:
            out.values[key] = value
            out.sources[key] = "flag"
    return out
