"""The hostile-input contract on a fast, fixed sample of the generated cases (the whole set: scripts/fuzz.py),
plus the cases that need a real signal or a second process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fuzz.hostile import SUITES, Case, generate, run_case

ROOT = Path(__file__).resolve().parents[2]
#: every suite is represented; the sample changes only when the generators do
SAMPLE_EVERY = 8


def _sample(tmp: Path) -> list[Case]:
    cases = list(generate(0, tmp / "cases"))
    picked = cases[::SAMPLE_EVERY]
    # the cases the issue names explicitly, always
    must = ("FIFO", "/dev/zero", "onto its input", "foreign folder", "fail closed", "index ../x", "2**40")
    picked += [c for c in cases if any(m in c.name for m in must) and c not in picked]
    return picked


def test_sample_of_generated_hostile_inputs_keeps_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    work = tmp_path / "_io"
    work.mkdir()
    cases = _sample(tmp_path)
    assert set(SUITES) <= {_suite(c) for c in cases}
    failures = []
    for case in cases:
        outcome = run_case(case, work)
        if outcome.problems:
            failures.append(
                f"{case.name}: rc={outcome.rc} {'; '.join(outcome.problems)} | {outcome.stderr[-300:]}"
            )
    assert not failures, "\n".join(failures)


def _suite(case: Case) -> str:
    head = case.name.split(":", 1)[0]
    return {
        "trace": "trace",
        "shards": "trace",
        "fail closed": "trace",
        "checkpoint": "checkpoint",
        "config": "config",
        "flag": "config",
        "baseline": "config",
        "output": "output",
    }.get(head, "importer" if head.startswith("import") else head)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = [c.name for c in generate(7, tmp_path / "a")]
    b = [c.name for c in generate(7, tmp_path / "b")]
    assert a == b and len(a) > 100


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_signal_mid_import_cleans_up_like_ctrl_c(tmp_path: Path, signame: str) -> None:
    """A real signal arrives while the first shard is being written: exit 128 + signum, one line, and no
    ``.out.*.tmp`` folder (nor ``out``) left behind."""
    import torch

    for i in range(3):
        torch.save((torch.randn(50, 8),), tmp_path / f"b{i}.pt")
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from moediag.trace import writer
        original = writer.TraceWriter.flush
        def flush(self):
            original(self)
            os.kill(os.getpid(), signal.{signame})
        writer.TraceWriter.flush = flush
        from moediag.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = tmp_path / "out"
    args = [
        "import",
        "hf",
        str(tmp_path / "b*.pt"),
        "-o",
        str(out),
        "--top-k",
        "2",
        "--score-function",
        "softmax",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr.strip() == f"moediag: terminated ({signame})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.pt", "b1.pt", "b2.pt"]
