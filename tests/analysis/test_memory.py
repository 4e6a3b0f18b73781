"""tune_allocator: applied once on glibc, a no-op elsewhere or when opted out.

What it buys (fewer page faults, ~10% faster units) is a performance property, measured by
benchmarks/bench_inspect.sh and recorded in docs/benchmarks.md, not asserted here: fault counts depend on
the kernel's transparent huge pages and vary run to run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from moediag.analysis.memory import tune_allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
CODE = "from moediag.analysis.memory import tune_allocator; print(tune_allocator(), tune_allocator())"


def _run(**env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CODE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt settings exist only in glibc")
def test_applied_on_glibc_and_idempotent() -> None:
    assert tune_allocator() is True
    assert _run() == "True True"


def test_opt_out() -> None:
    assert _run(MOEDIAG_MALLOC="default") == "False False"


@pytest.mark.skipif(GLIBC, reason="only meaningful without glibc")
def test_no_op_without_glibc() -> None:
    assert tune_allocator() is False
