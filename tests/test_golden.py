"""Golden files for every output: terminal tables at 80 and 120 columns (trace, accuracy, checkpoint, check,
compare, replay), check's JUnit, Markdown, GitHub and JSON, and inspect --json, on the committed sample
traces; scrubbed of dates, versions and machine paths. The HTML pages' golden files are under
tests/render/golden/ (report.html, compare.html).

Regenerate all of them after a deliberate change, then review the diff:

    python -m pytest tests/test_golden.py tests/render/test_html.py --regen-golden
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moediag import __version__
from moediag.cli import app

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
TRACE = "sample_traces/imbalanced.safetensors"
CHECKPOINT = "sample_traces/trained_noaux"
TRAINED = "sample_traces/trained_noaux.safetensors"  # its trace: router inputs and tokens.correct

CASES: dict[str, list[str]] = {
    "inspect_trace": ["inspect", TRACE],
    "inspect_checkpoint": ["inspect", CHECKPOINT],
    "check_table": ["check", TRACE],
    "check_junit": ["check", TRACE, "--format", "junit"],
    "check_markdown": ["check", TRACE, "--format", "markdown"],
    "check_github": ["check", TRACE, "--format", "github"],
    "check_json": ["check", TRACE, "--json"],
    "inspect_json": ["inspect", TRACE, "--json"],
    # the other terminal renderers: accuracy tables, compare (traces; checkpoints), replay
    "inspect_accuracy": ["inspect", TRAINED],
    "compare_traces": ["compare", "sample_traces/trained_aux.safetensors", TRAINED],
    "compare_checkpoints": ["compare", "sample_traces/trained_aux", CHECKPOINT],
    "replay_table": [
        "replay",
        CHECKPOINT,
        TRAINED,
        "--device",
        "cpu",
        "--capacity-factor",
        "1",
        "--ep-size",
        "2",
    ],
}
TABLES = (
    "inspect_trace",
    "inspect_checkpoint",
    "check_table",
    "inspect_accuracy",
    "compare_traces",
    "compare_checkpoints",
    "replay_table",
)


def scrub(text: str) -> str:
    """Dates, the version and this machine's paths out, so a golden file changes only with the output."""
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\+00:00|Z)?", "DATE", text)
    text = re.sub(r'timestamp="[^"]*"', 'timestamp="DATE"', text)
    text = re.sub(r'time="[0-9.]+"', 'time="0"', text)
    return text.replace(f'"{__version__}"', '"VERSION"')


def _rounded(obj: Any) -> Any:
    """Floats to 6 significant digits: the last bits of a float32 kernel may differ between CPUs."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _output(args: list[str], columns: int) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code in (0, 1), result.output
    text = result.stdout
    if "--json" in args:
        text = json.dumps(_rounded(json.loads(text)), indent=2) + "\n"
    return scrub(text)


@pytest.mark.parametrize(
    ("name", "columns"),
    [(n, c) for n in CASES for c in ((80, 120) if n in TABLES else (100,))],
)
def test_golden(
    name: str, columns: int, regen_golden: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)  # relative sample paths (the repository has no [tool.moediag] table)
    text = _output(CASES[name], columns)
    suffix = {"check_junit": "xml", "check_markdown": "md", "check_json": "json", "inspect_json": "json"}
    path = GOLDEN / (f"{name}_{columns}.txt" if name in TABLES else f"{name}.{suffix.get(name, 'txt')}")
    if regen_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path.name}: run pytest tests/test_golden.py --regen-golden"
    assert text == path.read_text(encoding="utf-8"), (
        f"{' '.join(CASES[name])} at {columns} columns changed: review, then regenerate with "
        "python -m pytest tests/test_golden.py --regen-golden"
    )
