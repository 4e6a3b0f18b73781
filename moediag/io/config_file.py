"""Finding and reading moediag's configuration file: ``moediag.toml`` (its tables) or a ``pyproject.toml``
with a ``[tool.moediag]`` table, from the working directory upward to the repository root (a directory holding
``.git``); ``moediag.toml`` wins within one directory. Only the file is found and parsed here (a bounded
regular file, bounded nesting); what its tables mean is :mod:`moediag.options` (every command's settings)
and :mod:`moediag.checks.config` (the check rules).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moediag.errors import ConfigError, InvalidInputError
from moediag.io.paths import CONFIG_MAX_BYTES, read_capped

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


#: nesting deeper than this is refused (the check table is two levels below the root)
MAX_TOML_DEPTH = 32


def _depth_ok(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def read_toml(path: Path) -> dict[str, Any]:
    """A regular file of at most CONFIG_MAX_BYTES, parsed as TOML (FIFOs and devices refused unopened)."""
    if not path.exists() and not path.is_symlink():
        raise ConfigError("config file not found", path)
    if path.is_dir():
        raise ConfigError("config file is a directory", path)
    try:
        data = read_capped(path, CONFIG_MAX_BYTES, "config file")
    except InvalidInputError as exc:
        raise ConfigError(exc.message, path) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid TOML: not UTF-8 text", path) from None
    except RecursionError:
        raise ConfigError(f"not valid TOML: nested deeper than {MAX_TOML_DEPTH} levels", path) from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    if not _depth_ok(doc, MAX_TOML_DEPTH):
        raise ConfigError(f"not valid TOML: nested deeper than {MAX_TOML_DEPTH} levels", path)
    return doc


def has_moediag_table(doc: Mapping[str, Any]) -> bool:
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
        if candidate.is_file() and has_moediag_table(read_toml(candidate)):
            return candidate
        if (folder / ".git").exists():
            return None
    return None
