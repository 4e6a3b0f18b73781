"""Output-path safety, regular-file reads, confinement and strict JSON (moediag.io.paths / strict_json)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from moediag.errors import InvalidInputError
from moediag.io import strict_json
from moediag.io.atomic import write_atomic
from moediag.io.outputs import OutputError, check_output, looks_like_moediag_output
from moediag.io.paths import confined, read_capped, require_regular
from moediag.trace import TraceWriter, build_metadata, write_trace

META = build_metadata(num_experts=4, top_k=1, score_function="softmax")


def test_output_onto_an_input_is_refused_by_inode(tmp_path: Path) -> None:
    src = tmp_path / "t.safetensors"
    write_trace(src, {"layers.0.router_logits": torch.randn(3, 4)}, META)
    alias = tmp_path / "alias.safetensors"
    os.link(src, alias)  # another name, the same inode
    for target in (src, alias, tmp_path / "." / "t.safetensors"):
        with pytest.raises(OutputError, match="one of the inputs"):
            check_output(target, [src], force=True)
    with pytest.raises(OutputError, match="holds the input"):
        check_output(tmp_path, [src], folder=True, force=True)


def test_files_inside_an_input_folder_are_input_too(tmp_path: Path) -> None:
    """A checkpoint or trace folder's own files (shards, config.json) are never replaced, --force or not;
    a moediag report written into that folder before may be."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    with TraceWriter(tmp_path / "trace", META) as w:
        w.add({"layers.0.router_logits": torch.randn(3, 4)})
    shard = next((tmp_path / "trace").iterdir())
    for target, src in (
        (ckpt / "config.json", ckpt),
        (ckpt / "model.safetensors", ckpt),
        (shard, shard.parent),
    ):
        with pytest.raises(OutputError, match="inside the input folder"):
            check_output(target, [src], force=True)
    with pytest.raises(OutputError, match="inside the input folder"):  # a trace folder an input holds
        check_output(tmp_path / "trace", [tmp_path], folder=True, force=True)
    report = write_atomic(ckpt / "check.json", '{"meta": {"tool": "moediag"}}')
    assert check_output(report, [ckpt]) == report  # its own earlier output
    assert check_output(ckpt / "new.json", [ckpt]) == ckpt / "new.json"  # a new file beside the inputs
    assert (ckpt / "config.json").read_text() == "{}" and (
        ckpt / "model.safetensors"
    ).read_bytes() == b"weights"


def test_a_checkpoint_or_trace_file_protects_what_reading_it_opens(tmp_path: Path) -> None:
    """Given as one file (a shard, an index), a checkpoint's config, index and other shards are input
    too; so is any other name for an input file (hard link, symlink); and no file is added to an input
    trace folder. Other files beside an input file stay the user's to replace with --force."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for n in ("config.json", "model.safetensors.index.json", "a.safetensors", "b.safetensors"):
        (ckpt / n).write_bytes(b"x")
    for src in (ckpt / "a.safetensors", ckpt / "model.safetensors.index.json"):
        for target in ("config.json", "b.safetensors", "model.safetensors.index.json"):
            with pytest.raises(OutputError, match="a file the inputs read|one of the inputs"):
                check_output(ckpt / target, [src], force=True)
    os.link(ckpt / "config.json", tmp_path / "hard.json")
    (tmp_path / "soft.json").symlink_to(ckpt / "config.json")
    for other in ("hard.json", "soft.json"):
        with pytest.raises(OutputError, match="another name|inside the input folder"):
            check_output(tmp_path / other, [ckpt], force=True)
    (ckpt / "notes.txt").write_text("mine")
    assert check_output(ckpt / "notes.txt", [ckpt / "a.safetensors"], force=True) == ckpt / "notes.txt"
    with TraceWriter(tmp_path / "trace", META) as w:
        w.add({"layers.0.router_logits": torch.randn(3, 4)})
    with pytest.raises(OutputError, match="inside the input trace folder"):
        check_output(tmp_path / "trace" / "figure.png", [tmp_path / "trace"])
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "a.safetensors", "b.safetensors"}


def test_foreign_folders_are_never_replaced_and_foreign_files_need_force(tmp_path: Path) -> None:
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a moediag trace"):
        check_output(foreign, folder=True, force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(foreign)
    mine = tmp_path / "report.html"
    mine.write_text("<p>hand-written</p>")
    with pytest.raises(OutputError, match="--force"):
        check_output(mine)
    assert check_output(mine, force=True) == mine
    with pytest.raises(OutputError, match="not a folder"):
        check_output(mine / "x.json")
    # the library refuses too, not only the CLI's check: a TraceWriter never deletes a foreign folder
    with pytest.raises(OutputError), TraceWriter(foreign, META) as w:
        w.add({"layers.0.router_logits": torch.randn(3, 4)})
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "data",
        "report.html",
    ]


def test_moediag_outputs_are_replaced_with_a_note(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "trace"
    with TraceWriter(folder, META) as w:
        w.add({"layers.0.router_logits": torch.randn(3, 4)})
    assert check_output(folder, folder=True) == folder
    out = write_atomic(tmp_path / "check.json", '{"meta": {"tool": "moediag"}}')
    assert looks_like_moediag_output(out) and check_output(out) == out
    assert capfd.readouterr().err.count("moediag: note: replacing") == 2


def test_special_files_are_refused_before_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(InvalidInputError, match="expected a regular"):
            require_regular(path)
        with pytest.raises(InvalidInputError, match="expected a regular"):
            read_capped(path, 100)
        with pytest.raises(OutputError, match="refusing to write"):
            check_output(path)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(InvalidInputError, match="limit"):
        read_capped(big, 100)
    assert read_capped(big, 101) == b"x" * 101


def test_names_from_inside_an_input_stay_inside(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "a.safetensors").write_bytes(b"")
    os.symlink(tmp_path, root / "up")
    assert confined(root, "a.safetensors", root / "index.json") == root / "a.safetensors"
    # a symlink the folder holds is followed (Hugging Face cache snapshots link every file to ../../blobs)
    assert confined(root, "up/x", root / "index.json") == root / "up" / "x"
    assert confined(root, "sub/../a.safetensors", root / "index.json") == root / "a.safetensors"
    for name in ("../x", "/etc/passwd", "sub/../../x", "..", "", "a\x00b", "C:\\x"):
        with pytest.raises(InvalidInputError):
            confined(root, name, root / "index.json")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 100 + "]" * 100, "nested deeper"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ("[NaN]", "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ("[1e999]", "out of range"),
        ("[" + "9" * 5000 + "]", "digits"),
        ('{"a": 1, "a": 2}', "twice"),
        ("{", "not valid JSON"),
        (b"\xff", "UTF-8"),
    ],
)
def test_strict_json_refuses(text: str | bytes, reason: str) -> None:
    with pytest.raises(strict_json.StrictJSONError, match=reason):
        strict_json.loads(text)


def test_strict_json_accepts_ordinary_documents() -> None:
    assert strict_json.loads('{"a": [1, 2.5, -3e2, null, true, "x"], "b": {"c": {}}}') == {
        "a": [1, 2.5, -300.0, None, True, "x"],
        "b": {"c": {}},
    }


def test_shards_in_a_folder_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with TraceWriter(tmp_path / "t", META, shard_tokens=2) as w:
            w.add({"layers.0.router_logits": torch.randn(5, 4)})
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "t").iterdir()}
    assert modes == {0o640} and stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o750
