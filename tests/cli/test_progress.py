"""Progress on stderr when it is a terminal: the report's figures (several seconds) show a live count."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.render._traces import report_trace

ROOT = Path(__file__).resolve().parents[2]


def test_report_shows_progress_while_drawing_figures(tmp_path: Path) -> None:
    trace = report_trace(tmp_path / "t.safetensors", layers=2, tokens=300)
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100", TERM="xterm")
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "moediag", "report", str(trace), "-o", str(tmp_path / "r.html")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    seen = b"".join(chunks).decode("utf-8", "replace")
    assert "drawing figures" in seen
    assert "wrote" in seen and "KB" in seen
