"""Command-line interface: a thin adapter over the moediag library.

Each command module registers itself on :data:`moediag.cli.app.app` when imported below.
"""

from __future__ import annotations

import sys

from moediag.cli import check as _check  # noqa: F401
from moediag.cli import compare as _compare  # noqa: F401
from moediag.cli import explain as _explain  # noqa: F401
from moediag.cli import import_cmd as _import_cmd  # noqa: F401
from moediag.cli import inspect as _inspect  # noqa: F401  (registers `inspect`)
from moediag.cli import plot as _plot  # noqa: F401
from moediag.cli import record as _record  # noqa: F401
from moediag.cli import replay as _replay  # noqa: F401
from moediag.cli import report as _report  # noqa: F401
from moediag.cli import watch as _watch  # noqa: F401
from moediag.cli.app import app, main

__all__ = ["app", "main", "run"]


def run() -> None:
    sys.exit(main())
