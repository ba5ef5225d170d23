"""Atomic writes: a file or a folder of outputs appears whole, or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ProgressiveRegistrationLib.core.atomic import (
    LOCK_NAME,
    MANIFEST_NAME,
    STAGING_PREFIX,
    OutputFolder,
    concurrent,
    write_all,
    write_file,
    write_text,
)
from ProgressiveRegistrationLib.core.errors import InputError


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


# --- output folders ------------------------------------------------------------------------

def _writers(*names, content="new"):
    return {n: (lambda p, n=n: p.write_text(f"{content} {n}")) for n in names}


def test_concurrent_writers_run_on_other_threads_and_the_last_writer_after_all(tmp_path):
    import threading
    import time

    main = threading.get_ident()
    threads, seen = {}, {}

    def slow(name):
        def write(p):
            time.sleep(0.2)
            threads[name] = threading.get_ident()
            Path(p).write_text(name)
        return concurrent(write)

    def last(p):
        seen["files"] = sorted(q.name for q in Path(p).parent.iterdir())
        Path(p).write_text("summary")

    write_all(tmp_path / "out", {"a.nrrd": slow("a"), "b.nrrd": slow("b"),
                                 "c.txt": lambda p: Path(p).write_text("c"), "summary.json": last})
    assert threads["a"] != main and threads["b"] != main
    assert seen["files"] == ["a.nrrd", "b.nrrd", "c.txt"]  # every other output was complete before the last
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == [".progreg-outputs.json", "a.nrrd", "b.nrrd",
                                                                     "c.txt", "summary.json"]


def test_a_failing_concurrent_writer_changes_nothing(tmp_path):
    out = tmp_path / "out"
    write_all(out, {"old.txt": lambda p: Path(p).write_text("old")})

    def fails(p):
        Path(p).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_all(out, {"a.nrrd": concurrent(fails), "b.txt": lambda p: Path(p).write_text("b"),
                        "summary.json": lambda p: Path(p).write_text("s")})
    assert sorted(q.name for q in out.iterdir()) == [".progreg-outputs.json", "old.txt"]


def test_an_output_folder_is_checked_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    for bad, says in (("", "empty path"), (tmp_path / "a_file", "is a file"),
                      (tmp_path / "a_file" / "sub", "cannot write there")):
        with pytest.raises(InputError, match=says):
            OutputFolder(bad).__enter__()
    assert (tmp_path / "a_file").read_text() == "mine"


def test_outputs_are_staged_inside_the_folder_itself(tmp_path):
    """Staged on the folder's own file system (a mount point or a symlink to another disk
    works: the final renames never cross devices), and no staging folder stays."""
    seen = []
    out = tmp_path / "out"
    write_all(out, {"a.txt": lambda p: (seen.append(p.parent.parent), p.write_text("a"))})
    assert seen == [out] and sorted(os.listdir(out)) == [MANIFEST_NAME, "a.txt"]


def test_a_reused_folder_holds_only_the_new_runs_outputs(tmp_path):
    out = tmp_path / "out"
    write_all(out, _writers("transform.nrrd", "tre.csv", "phase_0/summary.json", content="old"))
    (out / "notes.txt").write_text("the user's own")
    write_all(out, _writers("transform.nii.gz", "summary.json"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == \
        sorted([MANIFEST_NAME, "notes.txt", "summary.json", "transform.nii.gz"])
    assert (out / "notes.txt").read_text() == "the user's own"


def test_a_failed_run_changes_nothing_and_creates_no_folder(tmp_path):
    out = tmp_path / "deep" / "out"

    def fail(p):
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_all(out, {"a.txt": lambda p: p.write_text("a"), "b.txt": fail})
    assert not (tmp_path / "deep").exists()
    write_all(tmp_path / "kept", _writers("a.txt", content="old"))
    with pytest.raises(OSError):
        write_all(tmp_path / "kept", {"a.txt": lambda p: p.write_text("new"), "b.txt": fail})
    assert (tmp_path / "kept" / "a.txt").read_text() == "old a.txt"


def test_a_locked_folder_refuses_a_second_run(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out):
        with pytest.raises(InputError, match="another progreg run"):
            OutputFolder(out).__enter__()
    with OutputFolder(out) as folder:  # free again
        folder.write(_writers("a.txt"))
    assert not (out / LOCK_NAME).exists()


def test_stale_staging_folders_are_swept(tmp_path):
    out = tmp_path / "out"
    (out / f"{STAGING_PREFIX}killed" / "phase_0").mkdir(parents=True)
    (out / f"{STAGING_PREFIX}killed" / "phase_0" / "transform.nrrd").write_text("partial")
    write_all(out, _writers("a.txt"))
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_loose_files_into_a_users_folder_touch_nothing_else(tmp_path):
    (tmp_path / "mine.nrrd").write_text("mine")
    write_all(tmp_path, _writers("phantom.nrrd"), exclusive=False)
    write_all(tmp_path, _writers("other.nrrd"), exclusive=False)
    assert sorted(os.listdir(tmp_path)) == ["mine.nrrd", "other.nrrd", "phantom.nrrd"]
