"""Follower: complete files only, appended lines once, rotation and truncation, never a write."""

from __future__ import annotations

import os
from pathlib import Path

from moediag.watch.follow import Follower, NewLines, WholeFile


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _follower(folder: Path, clock: Clock, settle: float = 1.0) -> Follower:
    return Follower(
        [folder],
        wants=lambda p: p.suffix in (".pt", ".jsonl"),
        appendable=lambda p: p.suffix == ".jsonl",
        settle=settle,
        clock=clock,
    )


def _whole(items: list) -> list[str]:
    return [i.path.name for i in items if isinstance(i, WholeFile)]


def _lines(items: list) -> list[tuple[str, int, list[bytes]]]:
    return [(i.path.name, i.first_line, i.lines) for i in items if isinstance(i, NewLines)]


def test_a_whole_file_is_read_once_after_its_size_settles(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock)
    (tmp_path / "a.pt").write_bytes(b"x" * 10)
    assert f.poll() == []  # first sighting
    clock.t = 0.5
    (tmp_path / "a.pt").write_bytes(b"x" * 20)  # still growing
    assert f.poll() == []
    clock.t = 1.0
    assert f.poll() == []  # unchanged for 0.5 s only
    clock.t = 1.6
    items = f.poll()
    assert _whole(items) == ["a.pt"]
    Follower.mark_done(items[0].state)
    clock.t = 5.0
    assert f.poll() == []  # never again


def test_temporary_names_are_never_read_and_a_rename_is(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock)
    for name in (".a.pt", "a.pt.tmp", "a.pt.part", "a.pt~"):
        (tmp_path / name).write_bytes(b"data")
    assert f.poll() == []
    clock.t = 10
    assert f.poll() == []
    os.replace(tmp_path / "a.pt.tmp", tmp_path / "a.pt")  # atomic rename into place
    assert f.poll() == []
    clock.t = 11
    assert _whole(f.poll()) == ["a.pt"]


def test_a_failed_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock, settle=0)
    (tmp_path / "a.pt").write_bytes(b"bad")
    items = f.poll()
    Follower.mark_done(items[0].state, failed=True)
    assert f.poll() == []
    (tmp_path / "a.pt").write_bytes(b"better now")
    clock.t = 1
    assert _whole(f.poll()) == ["a.pt"]


def test_appended_lines_are_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock)
    log = tmp_path / "r.jsonl"
    log.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    assert _lines(f.poll()) == [("r.jsonl", 1, [b'{"a": 1}', b'{"a": 2}'])]
    assert f.poll() == []
    with open(log, "ab") as fh:
        fh.write(b': 3}\n{"a": 4}\n')
    assert _lines(f.poll()) == [("r.jsonl", 3, [b'{"a": 3}', b'{"a": 4}'])]


def test_rotation_by_rename_continues_the_old_file_and_starts_the_new(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock)
    log = tmp_path / "r.jsonl"
    log.write_bytes(b"1\n2\n")
    assert _lines(f.poll()) == [("r.jsonl", 1, [b"1", b"2"])]
    with open(log, "ab") as fh:
        fh.write(b"3\n")  # written just before rotation, not yet read
    os.rename(log, tmp_path / "r.jsonl.1")
    log.write_bytes(b"new 1\n")
    got = sorted(_lines(f.poll()))
    assert got == [("r.jsonl", 1, [b"new 1"]), ("r.jsonl.1", 3, [b"3"])]


def test_a_rotated_copy_never_seen_is_not_read_and_truncation_restarts(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock)
    log = tmp_path / "r.jsonl"
    log.write_bytes(b"1\n2\n")
    f.poll()
    (tmp_path / "r.jsonl.1").write_bytes(b"1\n2\n")  # copytruncate: the copy holds consumed lines
    log.write_bytes(b"")
    assert f.poll() == []
    log.write_bytes(b"after\n")
    assert _lines(f.poll()) == [("r.jsonl", 1, [b"after"])]


def test_state_of_deleted_files_is_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock, settle=0)
    for i in range(5):
        (tmp_path / f"{i}.pt").write_bytes(b"x")
    for item in f.poll():
        Follower.mark_done(item.state)
    assert len(f.states) == 5
    for i in range(5):
        (tmp_path / f"{i}.pt").unlink()
    f.poll()
    assert f.states == {}


def test_polling_writes_nothing_into_the_folder(tmp_path: Path) -> None:
    clock = Clock()
    f = _follower(tmp_path, clock, settle=0)
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "r.jsonl").write_bytes(b"1\n")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    for _ in range(3):
        f.poll()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_a_file_named_explicitly_is_followed_whatever_its_name(tmp_path: Path) -> None:
    log = tmp_path / "responses.log"
    log.write_bytes(b"1\n")
    f = Follower([log], wants=lambda p: False, appendable=lambda p: True, settle=0, clock=Clock())
    assert _lines(f.poll()) == [("responses.log", 1, [b"1"])]


def test_an_idle_folder_costs_no_reads_and_a_rewritten_dump_is_new(tmp_path: Path, monkeypatch) -> None:
    import moediag.watch.follow as follow

    clock = Clock()
    f = _follower(tmp_path, clock, settle=0)
    for i in range(3):
        (tmp_path / f"{i}.pt").write_bytes(bytes([i]) * 100)
    for item in f.poll():
        Follower.mark_done(item.state)
    reads = []
    real = follow._head
    monkeypatch.setattr(follow, "_head", lambda p: reads.append(p.name) or real(p))
    for _ in range(3):
        assert f.poll() == []
    assert reads == []
    clock.t = 1
    (tmp_path / "1.pt").write_bytes(b"another dump in the same inode" * 4)  # rewritten in place
    assert _whole(f.poll()) == ["1.pt"] and reads


def test_an_unreadable_appended_file_is_reported_once_and_read_when_it_can_be(
    tmp_path: Path, monkeypatch
) -> None:
    import builtins

    import moediag.watch.follow as follow

    log = tmp_path / "r.jsonl"
    log.write_bytes(b"1\n")
    f = _follower(tmp_path, Clock())

    def denied(path, mode="r", *args, **kwargs):  # what a file without read permission gives a non-root user
        if "b" in mode and Path(path).name == "r.jsonl":
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(follow, "open", denied, raising=False)
    assert f.poll() == [] and f.poll() == []
    assert len(f.problems) == 1 and f.problems[0][1] == "cannot read (Permission denied); will keep trying"
    monkeypatch.undo()
    assert _lines(f.poll()) == [("r.jsonl", 1, [b"1"])]
