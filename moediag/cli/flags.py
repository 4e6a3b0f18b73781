"""The global flags (--debug, --quiet, --no-color) as the app parsed them, read by every part of the CLI."""

from __future__ import annotations

import os

GLOBAL_FLAGS = {"--debug": "debug", "--quiet": "quiet", "--no-color": "no_color"}


state = {"debug": False, "quiet": False, "no_color": False}


def is_debug() -> bool:
    return bool(state["debug"])


def is_quiet() -> bool:
    return bool(state["quiet"])


def colour_enabled() -> bool:
    """False under ``--no-color`` or ``NO_COLOR``; rich itself turns colour off when output is piped."""
    return not (state["no_color"] or os.environ.get("NO_COLOR"))
