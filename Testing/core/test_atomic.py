"""Atomic writes: a file or a folder of outputs appears whole, or not at all."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import stat
from pathlib import Path

import pytest

from ProgressiveRegistrationLib.core.atomic import (
    LOCK_NAME,
    MANIFEST_NAME,
    STAGING_PREFIX,
    OutputFolder,
    check_writable,
    concurrent,
    write_all,
    write_file,
    write_text,
)
from ProgressiveRegistrationLib.core.errors import InputError, WriteError


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


@pytest.mark.skipif(os.name == "nt", reason="os.kill with SIGTERM ends the process on Windows")
def test_sigterm_while_a_writer_thread_starts_changes_nothing_and_leaves_no_thread(tmp_path, monkeypatch):
    """SIGTERM (raised, as the command line's handler does) just as a writer's thread has started:
    it reaches the caller once every writer is done, nothing reaches the folder, no staging folder
    stays, and no thread writes on (raised at once, it left that thread writing into a staging
    folder that was being removed)."""
    import signal
    import threading
    import time

    class Interrupted(KeyboardInterrupt):
        pass

    def handler(signum, frame):
        raise Interrupted

    start = threading.Thread.start

    def start_then_signal(thread):
        start(thread)
        os.kill(os.getpid(), signal.SIGTERM)

    finished = []

    def slow(p):
        time.sleep(0.3)
        Path(p).write_text("a")
        finished.append(p)

    out = tmp_path / "out"
    write_all(out, {"old.txt": lambda p: Path(p).write_text("old")})
    monkeypatch.setattr(threading.Thread, "start", start_then_signal)
    before = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Interrupted):
            write_all(out, {"a.nrrd": concurrent(slow), "b.nrrd": concurrent(slow),
                            "summary.json": lambda p: Path(p).write_text("s")})
        alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    finally:
        signal.signal(signal.SIGTERM, before)
    assert alive == [] and len(finished) == 2, (alive, finished)
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


# --- symbolic links inside an output folder --------------------------------------------------

def _fourd_outputs(content="old"):
    """register-4d's layout: a folder per phase and files at the top."""
    return _writers("phase_0/transform.nrrd", "phase_0/summary.json", "phase_1/transform.nrrd",
                    "phase_1/summary.json", "summary.json", content=content)


def _linked_phase(tmp_path):
    """An earlier register-4d run in ``out`` whose phase_1 is now a link to a folder elsewhere
    holding a file of the user's."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    write_all(out, _fourd_outputs())
    for f in (out / "phase_1").iterdir():
        f.unlink()
    (out / "phase_1").rmdir()
    elsewhere.mkdir()
    (elsewhere / "summary.json").write_text("the user's own")
    (out / "phase_1").symlink_to(elsewhere, target_is_directory=True)
    return out, elsewhere


def test_a_folder_linked_from_elsewhere_is_refused_before_any_work_and_nothing_goes_through_it(tmp_path):
    out, elsewhere = _linked_phase(tmp_path)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(InputError) as err:
        OutputFolder(out).__enter__()  # the check is on entry: before any registration
    message = str(err.value)
    assert "phase_1 is a symbolic link to" in message and str(elsewhere.resolve()) in message, message
    assert "\n" not in message
    assert sorted(os.listdir(elsewhere)) == ["summary.json"] and (elsewhere / "summary.json").read_text() == "the user's own"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # no lock left, nothing swept
    # A new folder with such a link (no earlier run): refused the same way.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "phase_1").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError, match="phase_1 is a symbolic link"):
        OutputFolder(fresh).__enter__()
    assert sorted(os.listdir(fresh)) == ["phase_1"] and sorted(os.listdir(elsewhere)) == ["summary.json"]


def test_a_folder_linked_within_the_folder_is_refused_before_the_writers_run(tmp_path):
    out = tmp_path / "out"
    (out / "phase_0").mkdir(parents=True)
    (out / "phase_0" / "mine.txt").write_text("mine")
    (out / "phase_1").symlink_to("phase_0", target_is_directory=True)  # inside: phase_1's files would replace phase_0's
    ran = []
    with OutputFolder(out) as folder:
        with pytest.raises(InputError, match="phase_1 is a symbolic link"):
            folder.write({"phase_0/a.txt": lambda p: ran.append(p), "phase_1/a.txt": lambda p: ran.append(p)})
    assert ran == [] and sorted(os.listdir(out / "phase_0")) == ["mine.txt"]
    assert not list(out.glob(f"{STAGING_PREFIX}*")) and not (out / LOCK_NAME).exists()


def test_linked_files_and_a_linked_output_folder_itself_are_fine(tmp_path):
    """A linked output file is replaced by the new file (its target untouched); the output
    folder itself may be a link (to another disk); a user's link in a folder of loose outputs is left alone."""
    elsewhere, real = tmp_path / "elsewhere", tmp_path / "real"
    elsewhere.mkdir()
    (elsewhere / "summary.json").write_text("the user's own")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").symlink_to(elsewhere / "summary.json")
    write_all(out, _writers("summary.json"))
    assert not (out / "summary.json").is_symlink() and (out / "summary.json").read_text() == "new summary.json"
    assert (elsewhere / "summary.json").read_text() == "the user's own"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    write_all(tmp_path / "link", _fourd_outputs())
    assert (real / "phase_1" / "summary.json").read_text() == "old phase_1/summary.json"
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "data").symlink_to(elsewhere, target_is_directory=True)
    write_all(loose, _writers("phantom.nrrd"), exclusive=False)
    assert sorted(os.listdir(loose)) == ["data", "phantom.nrrd"] and sorted(os.listdir(elsewhere)) == ["summary.json"]


# --- a full disk, no permission, a read-only file system --------------------------------------

def _fail_under(monkeypatch, root, code):
    """Creating a file or a folder under ``root`` fails with ``code`` as the kernel says it
    (a full or read-only file system, a folder without permission), whoever runs the test (root too)."""
    root = os.path.abspath(root)
    real_open, real_mkdir = os.open, os.mkdir

    def under(path):
        path = os.path.abspath(os.fsdecode(path))
        return path == root or path.startswith(root + os.sep)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    def fake_io_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and under(file):
            raise OSError(code, os.strerror(code), os.fsdecode(file))
        return real_io_open(file, mode, *args, **kwargs)

    real_io_open = io.open
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(io, "open", fake_io_open)
    monkeypatch.setattr(builtins, "open", fake_io_open)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "transform.nrrd"
    write_text(target, "old")

    def half_then_full(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as err:
        write_file(target, half_then_full)
    assert str(err.value) == f"no space left on device while writing {target}"
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["transform.nrrd"]
    # ITK and torch say a full disk as a RuntimeError: with (almost) no space left, it is one.
    with pytest.raises(RuntimeError, match="ITK ERROR"):  # plenty of space: not taken for a full disk
        write_file(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("ITK ERROR: ImageFileWriter")))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 << 20, 100 << 20, 4096))
    with pytest.raises(WriteError, match="no space left on device while writing"):
        write_file(target, lambda tmp: (_ for _ in ()).throw(RuntimeError("ITK ERROR: ImageFileWriter")))
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["transform.nrrd"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_write_into_dev_full_is_the_kernels_full_disk(tmp_path):
    def copy_to_dev_full(tmp):
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 65536)

    with pytest.raises(WriteError, match=f"no space left on device while writing {tmp_path / 'a.nrrd'}"):
        write_file(tmp_path / "a.nrrd", copy_to_dev_full)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_an_output_folder_is_written_names_the_output_not_the_staging(tmp_path):
    out = tmp_path / "out"
    write_all(out, _fourd_outputs())

    def full(p):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))

    for writer in (full, concurrent(full), lambda p: write_file(p, full)):
        with pytest.raises(WriteError) as err:
            write_all(out, {**_fourd_outputs("new"), "phase_1/jacobian.nrrd": writer, "summary.json": lambda p: None})
        assert str(err.value) == f"no space left on device while writing {out / 'phase_1' / 'jacobian.nrrd'}"
        assert (out / "phase_0" / "transform.nrrd").read_text() == "old phase_0/transform.nrrd"
        assert sorted(os.listdir(out)) == [MANIFEST_NAME, "phase_0", "phase_1", "summary.json"]
        assert sorted(os.listdir(out / "phase_1")) == ["summary.json", "transform.nrrd"]
    fresh = tmp_path / "fresh"
    with pytest.raises(WriteError):
        write_all(fresh, {"a.txt": full})
    assert not fresh.exists()


@pytest.mark.parametrize("code, says", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                        (errno.ENOSPC, "no space left on device")])
def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch, code, says):
    (tmp_path / "existing").mkdir()
    _fail_under(monkeypatch, tmp_path, code)
    for out in (tmp_path / "existing", tmp_path / "new" / "run"):
        with pytest.raises(InputError) as err:
            check_writable(out)
        assert str(err.value) == f"--out {out}: cannot write there ({says})"
        with pytest.raises(InputError, match=f"cannot write there \\({says}\\)"):
            OutputFolder(out).__enter__()
    with pytest.raises(WriteError) as err:
        write_text(tmp_path / "existing" / "a.txt", "a")
    path = tmp_path / "existing" / "a.txt"
    assert str(err.value) == (f"{says} while writing {path}" if code == errno.ENOSPC else f"cannot write to {path}: {says}")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["existing"] and os.listdir(tmp_path / "existing") == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a folder without write permission")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(InputError, match="cannot write there \\(permission denied\\)"):
            check_writable(locked / "run")
        with pytest.raises(WriteError, match=f"cannot write to {locked / 'a.txt'}: permission denied"):
            write_text(locked / "a.txt", "a")
    finally:
        locked.chmod(0o755)
    assert os.listdir(locked) == []
