"""scripts/install.sh says what it is doing (a fresh machine spends minutes downloading), run against a
stand-in Python so the shared environment is not touched."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "-c import torch") [ -n "$HAS_TORCH" ] && exit 0 || exit 1 ;;
  "-c import torch; print(torch.__version__)") echo 2.13.0 ;;
  "-m moediag --version") echo "moediag 0.1.0" ;;
esac
exit 0
"""


def run(tmp_path: Path, *args: str, has_torch: bool) -> tuple[str, list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    env = dict(os.environ, PYTHON=str(fake), FAKE_LOG=str(log), HAS_TORCH="1" if has_torch else "")
    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi: the CPU branch
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stderr, log.read_text().splitlines()


def test_install_announces_each_step_and_the_result(tmp_path: Path) -> None:
    err, calls = run(tmp_path, "dev", has_torch=True)
    lines = err.splitlines()
    assert re.match(r"install: \[\d+s\] 1/2 keeping torch 2\.13\.0", lines[0]), lines[0]  # elapsed: any
    assert "2/2 installing moediag (editable) with extras [dev]" in lines[1]
    assert lines[-1].endswith("done: moediag 0.1.0 (moediag --help lists the commands)")
    assert any(c.startswith("-m pip install") and c.endswith("-e .[dev]") for c in calls)


def test_install_says_it_is_downloading_torch_for_the_cpu(tmp_path: Path) -> None:
    err, calls = run(tmp_path, has_torch=False)
    assert "1/2 no NVIDIA GPU found: installing the CPU build torch==2.13.0+cpu" in err
    assert any("torch==2.13.0+cpu" in c for c in calls)
    assert any(c.endswith("-q -e .") for c in calls)
