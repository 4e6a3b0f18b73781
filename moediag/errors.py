"""One exception root for everything moediag reports to a user as a one-line error.

The CLI catches :class:`MoediagError` once and prints ``moediag: error: <path>: <message>`` with exit
code 2 (``--debug`` shows the traceback). Library users catch the same classes.
"""

from __future__ import annotations

import enum
import os


class ExitCode(enum.IntEnum):
    """Process exit codes (documented in docs/cli.md; never change their meaning)."""

    OK = 0
    CHECK_FAILED = 1
    INVALID_INPUT = 2
    INTERNAL_ERROR = 3


class MoediagError(Exception):
    """Root of every error moediag explains to the user. ``path`` names the file at fault."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidInputError(MoediagError):
    """A file that is not what it claims to be: corrupt, truncated, malformed or inconsistent."""


class MissingMetadataError(InvalidInputError):
    """A value analysis needs is absent; the message names the flag that supplies it."""


class UnsupportedLayoutError(MoediagError):
    """A checkpoint or dump whose layout moediag does not recognise."""


class ConfigError(MoediagError):
    """Invalid configuration: an unknown key, a value of the wrong type, a bad threshold."""


class UsageError(MoediagError):
    """Options that contradict each other or name things that do not exist (a layer, a kind)."""
