"""Where ``moediag check`` settings come from: defaults < a config file < command-line flags.

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
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moediag.checks import KEYS, CheckConfig, ConfigValueError
from moediag.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTION = "[tool.moediag.check]"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except IsADirectoryError:
        raise ConfigError("config file is a directory", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid TOML: not UTF-8 text", path) from None


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


def _has_moediag_table(doc: Mapping[str, Any]) -> bool:
    tool = doc.get("tool")
    return isinstance(tool, Mapping) and isinstance(tool.get("moediag"), Mapping)


def find_config(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file that applies in ``start`` (default: the working directory), or None."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "moediag.toml"
        if candidate.is_file():
            return candidate
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_moediag_table(_read_toml(candidate)):
            return candidate
        if (folder / ".git").exists():
            return None
    return None


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
        table = check_table(path, _read_toml(path), required=required)
    else:
        path = find_config(cwd)
        table = None if path is None else check_table(path, _read_toml(path), required=False)
    if path is not None and table is not None:
        config.file = str(path)
        apply_table(config, table, path)
    apply_flags(config, flags or {})
    return config
