"""Atomic writes: a file or a folder of outputs appears whole, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from ProgressiveRegistrationLib.core.atomic import write_all, write_file, write_text


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_text(target, "old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(target, half_then_fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_the_temporary_keeps_the_suffix_and_the_result_gets_the_users_mode(tmp_path):
    seen = []
    write_file(tmp_path / "field.nii.gz", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".nii.gz") and os.path.dirname(seen[0]) == str(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "field.nii.gz").stat().st_mode) == 0o666 & ~mask


def test_write_all_is_all_or_nothing(tmp_path):
    out = tmp_path / "results"

    def fail(path):
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        write_all(out, {"a.txt": lambda p: p.write_text("a"), "b.txt": fail})
    assert not out.exists() and os.listdir(tmp_path) == []
    write_all(out, {"a.txt": lambda p: p.write_text("a"), "sub/b.txt": lambda p: p.write_text("b")})
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    assert sorted(os.listdir(tmp_path)) == ["results"]
