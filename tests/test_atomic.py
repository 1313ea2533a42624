"""The one atomic write: old file or whole new one, the file and then its directory flushed to disk."""
from __future__ import annotations

import os
import stat

import pytest

from edge.runtime import atomic
from edge.runtime.atomic import atomic_file, write_atomic


def test_the_new_content_replaces_the_old_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    write_atomic(target, '{"new": 1}')
    write_atomic(tmp_path / "crop.png", b"\x89PNG")
    assert target.read_text() == '{"new": 1}' and (tmp_path / "crop.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.png", "results.json"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "cells.csv"
    target.write_text("old rows")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as fh:
            fh.write("half of the new rows")
            raise RuntimeError("disk full")
    assert target.read_text() == "old rows"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]


def test_the_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_atomic(tmp_path / "session.json", "{}")
    assert events == ["file", "rename", "dir"]
    events.clear()
    write_atomic(tmp_path / "log.jsonl", "{}", durable=False)
    assert events == ["rename"]


def test_a_new_file_gets_the_usual_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644


def test_only_writing_a_whole_new_file_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="new file"):
        with atomic_file(tmp_path / "x", "a"):
            pass
