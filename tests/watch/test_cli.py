"""`moediag watch` on the command line: exit codes, one-line errors, --once, --exit-on-alert, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moediag.cli import app
from tests.importers.fixtures import write_sglang_stat

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _skewed(folder: Path) -> None:
    lc = torch.zeros(2, 2, 4, dtype=torch.int64)
    lc[:, 1] = torch.tensor([100, 1, 1, 1])
    write_sglang_stat(folder, lc, 1.0)


def test_once_reports_and_exit_on_alert_fails(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _skewed(d)
    state = tmp_path / "s.json"
    args = ["watch", str(d), "--format", "sglang", "--once", "--state", str(state)]
    ok = runner.invoke(app, [*args, "--sink", f"jsonl:{tmp_path / 'out.jsonl'}"])
    assert ok.exit_code == 0, ok.output
    assert "alert: step 2: layer 1" in ok.output and "1 files" in ok.output
    kinds = [
        line.split('"kind": "')[1].split('"')[0] for line in (tmp_path / "out.jsonl").read_text().splitlines()
    ]
    assert kinds.count("layer") == 1 and "alert" in kinds
    again = runner.invoke(app, [*args, "--exit-on-alert"])
    assert again.exit_code == 0, again.output  # resumed from the state: nothing new, an empty window
    fresh = ["watch", str(d), "--format", "sglang", "--once", "--no-state", "--exit-on-alert"]
    assert runner.invoke(app, fresh).exit_code == 1
    off = ["--check", "max_vio=off", "--check", "max_cv=off", "--check", "min_entropy=off"]
    quiet = runner.invoke(app, [*fresh, *off])
    assert quiet.exit_code == 0 and "alert" not in quiet.output.replace("0 alerts", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "nope"], "unknown watch format 'nope'"),
        (["--format", "vllm"], "--format vllm needs --num-experts"),
        (["--format", "sglang", "--check", "max_vio"], "expected RULE=VALUE"),
        (["--format", "sglang", "--check", "bogus=1"], "unknown rule or option 'bogus'"),
        (["--format", "sglang", "--check", "max_vio=abc"], "--max-vio"),
        (["--format", "sglang", "--listen", "nowhere"], "expected HOST:PORT"),
        (["--format", "sglang", "--per-expert", "lots"], "expected off, all or top:N"),
        (["--format", "sglang", "--window-steps", "0"], "--window-steps must be at least 1"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["watch", str(tmp_path), "--once", "--no-state", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_source_and_state_inside_the_watched_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["watch", str(tmp_path / "nope"), "--format", "sglang", "--once"])
    assert result.exit_code == 2 and "no such file or folder to watch" in result.output
    result = runner.invoke(
        app, ["watch", str(tmp_path), "-f", "sglang", "--once", "--state", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "never writes into what it watches" in result.output
    sink = f"jsonl:{tmp_path / 'x.jsonl'}"
    result = runner.invoke(
        app, ["watch", str(tmp_path), "-f", "sglang", "--once", "--no-state", "--sink", sink]
    )
    assert result.exit_code == 2 and "inside the watched" in result.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_it_cleanly_and_saves_the_state(tmp_path: Path, sig: signal.Signals) -> None:
    d = tmp_path / "d"
    _skewed(d)
    state = tmp_path / "state.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moediag", "watch", str(d), "-f", "sglang", "--listen", "127.0.0.1:0",
         "--state", str(state), "--interval", "0.1", "--settle", "0"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "alert:" in line:
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=20)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert f"stopped ({sig.name})" in err and "Traceback" not in err
    assert '"files":1' in state.read_text().replace(" ", "")


def test_exit_on_alert_while_following(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moediag", "watch", str(d), "-f", "sglang", "--no-listen", "--no-state",
         "--interval", "0.1", "--settle", "0.1", "--exit-on-alert"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    assert proc.poll() is None  # nothing yet: it waits
    _skewed(d)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "stopped on an alert" in err


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(
            app, ["watch", str(tmp_path), "-f", "sglang", "--no-state", "--listen", f"127.0.0.1:{port}"]
        )
    assert result.exit_code == 2, result.output
    assert f"--listen 127.0.0.1:{port}: cannot listen" in result.output
