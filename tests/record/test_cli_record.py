"""`moediag record` through the CLI: exit codes, one-line errors, no partial output."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from moediag.cli import app
from moediag.trace import open_trace

runner = CliRunner()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_record_ok(model_dirs, texts, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    result = runner.invoke(
        app,
        [
            "record",
            str(model_dirs["deepseek_v3"]),
            "--text",
            str(texts["prose"]),
            "--text",
            str(texts["code"]),
            "-o",
            str(out),
            "--max-tokens",
            "120",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--router-inputs",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recorded 120 tokens x 2 MoE layers" in result.output
    trace = open_trace(out)
    assert trace.num_tokens == 120
    assert trace.meta.domains == ["prose", "code"]
    assert all("router_input" in info.kinds for info in trace.layers.values())


def test_record_dense_model_exit_2(model_dirs, texts, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    result = runner.invoke(
        app, ["record", str(model_dirs["dense"]), "--text", str(texts["prose"]), "-o", str(out)]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no MoE router found" in lines[0] and "dense" in lines[0]
    assert not out.exists() and not _leftovers(tmp_path)


def test_record_bad_inputs_exit_2(model_dirs, texts, tmp_path: Path) -> None:
    cases = [
        ([str(tmp_path / "nope"), "--text", str(texts["prose"])], "model folder not found"),
        ([str(model_dirs["mixtral"]), "--text", str(tmp_path / "none.txt")], "text file not found"),
        ([str(model_dirs["mixtral"]), "--text", str(texts["prose"]), "--seq-len", "1"], "--seq-len"),
        ([str(model_dirs["mixtral"]), "--text", str(texts["prose"]), "--dtype", "int8"], "--dtype"),
    ]
    if not torch.cuda.is_available():
        cases.append(
            ([str(model_dirs["mixtral"]), "--text", str(texts["prose"]), "--device", "cuda"], "CUDA")
        )
    for args, needle in cases:
        result = runner.invoke(app, ["record", *args, "-o", str(tmp_path / "t")])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and needle in result.output, result.output
    assert not (tmp_path / "t").exists() and not _leftovers(tmp_path)


def test_record_never_replaces_what_it_did_not_write(model_dirs, texts, tmp_path: Path) -> None:
    """-o a folder of someone else's files, the model folder itself, or one of the texts: exit 2, one line,
    everything as it was (checked before the model is loaded)."""
    model = model_dirs["deepseek_v3"]
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = sorted(p.name for p in model.iterdir())
    for out, why in (
        (foreign, "not a moediag trace"),
        (model, "one of the inputs"),
        (texts["prose"], "inputs"),
    ):
        result = runner.invoke(app, ["record", str(model), "--text", str(texts["prose"]), "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert why in result.output and len(result.output.strip().splitlines()) == 1
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(foreign.iterdir()) == [
        foreign / "notes.txt"
    ]
    assert sorted(p.name for p in model.iterdir()) == before
