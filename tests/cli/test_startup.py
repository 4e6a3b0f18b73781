"""`moediag --help` and `--version` must not pay for torch (about 2 s on a small machine)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, moediag.cli; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_and_explain_do_not_load_torch() -> None:
    """Running the app (its start-up work, --help, and `explain`, which reads the figure table) stays light:
    light modules inside heavy packages (analysis.memory, analysis.figures) must not import the package's
    torch-bound parts."""
    code = (
        "import sys\n"
        "from moediag.cli import main\n"
        "main(['--help']); main(['explain', 'conf'])\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.split()[-1] == "False", proc.stderr
