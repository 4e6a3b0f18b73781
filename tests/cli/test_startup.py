"""`moediag --help` and `--version` must not pay for torch (about 2 s on a small machine)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, moediag.cli; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
