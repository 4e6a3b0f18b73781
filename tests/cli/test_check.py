"""``moediag check`` end to end on traces made here: exit codes 0 / 1 / 2, config, formats, --output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from moediag.cli import app
from moediag.trace import build_metadata, write_trace

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
E, K, T = 8, 2, 512


def make_trace(
    path: Path, *, collapsed_layer: int | None = None, count_only: bool = False, seed: int = 0
) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(3):
        if count_only:
            tensors[f"layers.{layer}.expert_counts"] = torch.full((4, E), 100) + torch.randint(
                0, 10, (4, E), generator=g
            )
            continue
        logits = torch.randn(T, E, generator=g)
        if layer == collapsed_layer:
            logits[:, :2] += 10.0  # every token to experts 0 and 1: six dead experts, MaxVio = 3
        tensors[f"layers.{layer}.router_logits"] = logits
    return write_trace(path, tensors, build_metadata(num_experts=E, top_k=K, score_function="softmax"))


@pytest.fixture()
def traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()  # keep config discovery inside the test folder
    return {
        "healthy": make_trace(tmp_path / "healthy.safetensors"),
        "collapsed": make_trace(tmp_path / "collapsed.safetensors", collapsed_layer=2),
        "counts": make_trace(tmp_path / "counts.safetensors", count_only=True),
    }


def invoke(*args: str) -> Result:
    return runner.invoke(app, ["check", *args])


def test_defaults_pass_healthy_and_fail_collapsed(traces: dict[str, Path]) -> None:
    ok = invoke(str(traces["healthy"]))
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output
    bad = invoke(str(traces["collapsed"]))
    assert bad.exit_code == 1, bad.output
    assert "max_dead" in bad.output and "3.000 (layer 2)" in bad.output


def test_flags_layers_and_scope(traces: dict[str, Path]) -> None:
    assert invoke(str(traces["collapsed"]), "--layers", "0-1").exit_code == 0
    assert invoke(str(traces["collapsed"]), "--layers", "2").exit_code == 1
    assert invoke(str(traces["healthy"]), "--max-vio", "0.01").exit_code == 1
    assert (
        invoke(
            str(traces["collapsed"]),
            "--max-vio",
            "off",
            "--max-cv",
            "off",
            "--max-dead",
            "6",
            "--min-entropy",
            "off",
            "--layers",
            "2",
        ).exit_code
        == 0
    )
    model = invoke(
        str(traces["collapsed"]),
        "--scope",
        "model",
        "--max-dead",
        "off",
        "--max-vio",
        "1.5",
        "--format",
        "json",
    )
    doc = json.loads(model.stdout)
    vio = next(r for r in doc["rules"] if r["rule"] == "max_vio")
    assert vio["scope"] == "model" and vio["status"] == "pass"  # mean over 3 layers: (3 + ~0.1 + ~0.1) / 3
    bad = invoke(str(traces["healthy"]), "--layers", "7")
    assert bad.exit_code == 2 and "layer 7" in bad.output


def test_count_only_trace_skips_logit_rules(traces: dict[str, Path]) -> None:
    r = invoke(str(traces["counts"]), "--max-aux-loss", "1.5", "--max-drop-rate", "0.1", "--format", "json")
    assert r.exit_code == 0, r.output
    rules = {x["rule"]: x for x in json.loads(r.stdout)["rules"]}
    assert rules["max_aux_loss"]["status"] == "skip"
    assert rules["max_aux_loss"]["reason"] == "needs router logits (this layer has counts)"
    assert rules["max_drop_rate"]["status"] == "skip"
    assert rules["max_vio"]["status"] == "pass"
    strict = invoke(str(traces["counts"]), "--max-aux-loss", "1.5", "--strict")
    assert strict.exit_code == 1


def test_config_file_and_flag_precedence(traces: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.moediag.check]\nmax_vio = 0.01\n")
    assert invoke(str(traces["healthy"])).exit_code == 1  # file tightens the default
    assert invoke(str(traces["healthy"]), "--max-vio", "1.0").exit_code == 0  # flag wins
    other = tmp_path / "gate.toml"
    other.write_text("[check]\nmax_vio = 5\nmax_cv = 5\nmax_dead = 8\nmin_entropy = 0\n")
    assert invoke(str(traces["collapsed"]), "--config", str(other)).exit_code == 0


@pytest.mark.parametrize(
    ("body", "match"),
    [("max_vioo = 1", "unknown key 'max_vioo'"), ("max_vio = 'big'", "key 'max_vio'"), ("[broken", "TOML")],
)
def test_bad_config_exits_2(traces: dict[str, Path], tmp_path: Path, body: str, match: str) -> None:
    cfg = tmp_path / "moediag.toml"
    cfg.write_text(f"[check]\n{body}\n" if not body.startswith("[") else body)
    r = invoke(str(traces["collapsed"]), "--output", str(tmp_path / "out.json"), "--format", "json")
    assert r.exit_code == 2, r.output
    assert match in r.output and str(cfg) in r.output
    assert not (tmp_path / "out.json").exists()


def test_bad_flag_value_exits_2(traces: dict[str, Path]) -> None:
    r = invoke(str(traces["healthy"]), "--max-vio", "lots")
    assert r.exit_code == 2 and "--max-vio" in r.output
    assert invoke(str(traces["healthy"]), "--scope", "galaxy").exit_code == 2


def test_corrupt_or_missing_input_exits_2(traces: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    r = invoke(str(bad), "--output", str(tmp_path / "r.xml"), "--format", "junit")
    assert r.exit_code == 2, r.output
    assert "corrupt.safetensors" in r.output
    assert not (tmp_path / "r.xml").exists()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(traces["healthy"].read_bytes()[:-100])
    assert invoke(str(truncated)).exit_code == 2
    assert invoke(str(tmp_path / "nope.safetensors")).exit_code == 2


def test_output_formats_and_file(traces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "reports" / "check.xml"
    r = invoke(str(traces["collapsed"]), "--format", "junit", "--output", str(out))
    assert r.exit_code == 1
    assert "FAIL" in r.output  # verdict on stderr
    cases = ET.parse(out).getroot().findall("./testsuite/testcase")
    assert {c.get("name") for c in cases} == {"max_vio", "max_cv", "max_dead", "min_entropy"}
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    gh = invoke(str(traces["collapsed"]), "--format", "github")
    assert gh.exit_code == 1 and "::error file=" in gh.stdout
    md = invoke(str(traces["healthy"]), "--format", "markdown")
    assert md.exit_code == 0 and md.stdout.startswith("### moediag check: PASS")
    txt = tmp_path / "check.txt"
    assert invoke(str(traces["healthy"]), "--output", str(txt)).exit_code == 0
    assert "max_vio" in txt.read_text()


def test_baseline(traces: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    r = invoke(str(traces["healthy"]), "--format", "json", "--output", str(base))
    assert r.exit_code == 0
    assert invoke(str(traces["healthy"]), "--baseline", str(base)).exit_code == 0
    worse = invoke(
        str(traces["collapsed"]),
        "--baseline",
        str(base),
        "--max-vio",
        "off",
        "--max-cv",
        "off",
        "--max-dead",
        "off",
        "--min-entropy",
        "off",
        "--format",
        "json",
    )
    assert worse.exit_code == 1
    failed = {x["rule"] for x in json.loads(worse.stdout)["rules"] if x["status"] == "fail"}
    assert "baseline.max_vio" in failed
    wide = invoke(
        str(traces["collapsed"]),
        "--baseline",
        str(base),
        "--baseline-margin",
        "10",
        "--max-vio",
        "off",
        "--max-cv",
        "off",
        "--max-dead",
        "off",
        "--min-entropy",
        "off",
    )
    assert wide.exit_code == 0, wide.output
    inspect_json = tmp_path / "inspect.json"
    inspect_json.write_text(runner.invoke(app, ["inspect", str(traces["healthy"]), "--json"]).stdout)
    assert invoke(str(traces["healthy"]), "--baseline", str(inspect_json)).exit_code == 0
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    assert invoke(str(traces["healthy"]), "--baseline", str(junk)).exit_code == 2


SAMPLES = ROOT / "sample_traces"


@pytest.mark.skipif(
    not (SAMPLES / "collapsed.safetensors").exists(), reason="sample traces not generated yet"
)
def test_defaults_on_the_sample_traces() -> None:
    assert invoke(str(SAMPLES / "healthy.safetensors")).exit_code == 0
    assert invoke(str(SAMPLES / "collapsed.safetensors")).exit_code == 1


def test_baseline_of_another_model_is_exit_2_one_line(tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[2] / "sample_traces"
    base = runner.invoke(app, ["inspect", str(samples / "trained_aux.safetensors"), "--json"])
    (tmp_path / "base.json").write_text(base.stdout)
    res = runner.invoke(
        app, ["check", str(samples / "healthy.safetensors"), "--baseline", str(tmp_path / "base.json")]
    )
    err = res.stderr.strip().splitlines()
    assert (
        res.exit_code == 2
        and len(err) == 1
        and "base.json" in err[0]
        and "covers layers 0, 1, 2, 3" in err[0]
    )


def test_nothing_to_judge_fails_closed_unless_allow_empty(traces: dict[str, Path], tmp_path: Path) -> None:
    """A gate pointed at the wrong file must not go green: a safetensors with one unrelated tensor (a
    'dense checkpoint') and a trace whose every token is masked are exit 2, one line; --allow-empty passes."""
    from safetensors.torch import save_file

    dense = tmp_path / "wrong.safetensors"
    save_file({"embed.weight": torch.zeros(4, 4)}, str(dense))
    g = torch.Generator().manual_seed(0)
    masked = write_trace(
        tmp_path / "masked.safetensors",
        {
            "layers.0.router_logits": torch.randn(8, E, generator=g),
            "tokens.mask": torch.zeros(8, dtype=torch.bool),
        },
        build_metadata(num_experts=E, top_k=K, score_function="softmax"),
    )
    for path, why in ((dense, "no MoE layer"), (masked, "no routed tokens")):
        out = tmp_path / "verdict.json"
        closed = invoke(str(path), "--format", "json", "-o", str(out))
        assert closed.exit_code == 2, closed.output
        assert "nothing was checked" in closed.output and why in closed.output
        assert len(closed.output.strip().splitlines()) == 1 and not out.exists()
        opened = invoke(str(path), "--allow-empty", "--format", "json", "-o", str(out))
        assert opened.exit_code == 0, opened.output
        assert json.loads(out.read_text())["exit_code"] == 0
        out.unlink()


def test_output_never_lands_on_an_input_and_force_is_for_foreign_files(traces: dict[str, Path]) -> None:
    trace = traces["healthy"]
    before = trace.read_bytes()
    onto = invoke(str(trace), "--format", "json", "-o", str(trace), "--force")
    assert onto.exit_code == 2 and "one of the inputs" in onto.output
    assert trace.read_bytes() == before
    foreign = trace.parent / "notes.json"
    foreign.write_text('{"mine": true}')
    refused = invoke(str(trace), "--format", "json", "-o", str(foreign))
    assert refused.exit_code == 2 and "--force" in refused.output
    assert foreign.read_text() == '{"mine": true}'
    assert invoke(str(trace), "--format", "json", "-o", str(foreign), "--force").exit_code == 0
    again = invoke(
        str(trace), "--format", "json", "-o", str(foreign)
    )  # now moediag's own: replaced, announced
    assert again.exit_code == 0 and "replacing the previous moediag output" in again.output
