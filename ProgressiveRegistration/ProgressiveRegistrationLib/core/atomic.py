"""Atomic writes: a file or a folder of outputs appears whole or not at all.

Every output of the library goes through :func:`write_file` (one file) or an
:class:`OutputFolder` (a folder of outputs; :func:`write_all` for short). A file is written
under a temporary name beside its destination and renamed into place; a folder's outputs
are staged in a hidden folder inside the output folder itself (the same file system, so
the final renames are atomic even when the folder is a mount point), so that a crash, a
full disk, a signal or a bad input never leaves a half-written file, and a user's existing
file is replaced only by a complete one.

An output folder is locked while a run writes into it (a second run into the same folder
is refused), is checked before any work (not a file, writable, no folder inside it linked
from elsewhere), and holds only one run's outputs: the files an earlier run of this tool
wrote there that the new run does not write are removed; files this tool did not write are
never touched. Nothing is written or removed through a symbolic link: an output is never
placed into a linked folder (the link is refused, naming it), and a linked output file is
replaced by the new file, its target left alone. The output folder itself may be a link
(to another disk, say).

A write that fails for a reason the user can act on (a full disk, a quota, no permission, a
read-only file system) raises :class:`errors.WriteError` naming the output: one line, not a
traceback from deep inside an image writer. ITK and torch report a full disk as a
RuntimeError without the errno; a writer that fails with (almost) no space left on the
device is taken to have run out of it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from .errors import NO_SPACE, WRITE_FAILURES, InputError, WriteError, write_error
from .interrupts import interrupts_held

#: Hidden names inside an output folder: the lock, the staging folders, the list of outputs.
LOCK_NAME = ".progreg.lock"
STAGING_PREFIX = ".progreg-staging-"
MANIFEST_NAME = ".progreg-outputs.json"

#: A writer that fails with less than this free on its device has run out of space (ITK and
#: torch say so only as a RuntimeError).
FULL_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _reason(err: OSError) -> str:
    """An OSError's cause in words, for a one-line message."""
    return WRITE_FAILURES.get(err.errno) or (err.strerror or str(err)).lower()


def _out_of_space(folder: str | os.PathLike) -> bool:
    try:
        return shutil.disk_usage(folder).free < FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def _writing(path: str | os.PathLike, device: str | os.PathLike | None = None) -> Iterator[None]:
    """A failed write inside becomes a :class:`WriteError` naming ``path`` where the user can act
    on it; ``device``: a folder on the device written to, whose free space tells a writer's
    RuntimeError about a full disk from any other (None: OSErrors only)."""
    try:
        yield
    except Exception as err:
        found = write_error(err, path)
        if found is None and device is not None and isinstance(err, (RuntimeError, OSError)) \
                and not isinstance(err, InputError) and _out_of_space(device):
            found = WriteError(path, NO_SPACE)
        if found is None:
            raise
        raise found from err


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` for a temporary path beside ``path`` (same suffix, so that writers
    that pick the format by suffix still do), then rename it to ``path`` (a link there is
    replaced, its target left alone). :class:`WriteError` for a full disk, no permission or
    a read-only file system; the temporary file is removed whatever happens."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    tmp = None
    try:
        with _writing(path, path.parent):  # the space is looked at while the temporary still holds it
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            os.close(fd)
            # mkstemp makes the file private (0600); the output gets the mode any new file of the
            # user's gets, as if written directly.
            os.chmod(tmp, 0o666 & ~_umask())
            write(tmp)
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_writable(folder: str | os.PathLike, what: str = "--out") -> None:
    """:class:`InputError` (one line, before any work) unless a file can be created in
    ``folder``: not a file, not on a read-only file system, permitted. The folders made for
    the check are removed again."""
    folder = Path(folder)
    if str(folder).strip() == "":
        raise InputError(f"{what}: give an output folder (an empty path would write into the current folder)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder}: is a file, not a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".progreg-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"{what} {folder}: cannot write there ({_reason(err)})") from None
    finally:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


def concurrent(write: Callable[[Path], object]) -> Callable[[Path], object]:
    """Mark a writer of :meth:`OutputFolder.write` as one to run on a thread beside the
    others: it shares no state with them and spends its time outside the GIL (ITK's image
    writers compress and write without it, numpy's array work and Pillow's drawing and PNG
    encoding largely too; matplotlib's figures hold it)."""
    write.concurrent = True
    return write


def write_text(path: str | os.PathLike, text: str) -> None:
    write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_csv(path, rows: list[dict]) -> None:
    """Rows of dicts as a CSV file (columns: every key, in order of first appearance)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    write_file(path, write)


def _lock(handle) -> bool:
    """An exclusive, non-blocking lock on an open file; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # another drive (Windows)
        return False


class OutputFolder:
    """An output folder, checked, locked and swept on entry; outputs written with :meth:`write`.

    ``with OutputFolder(out) as folder: ...work...; folder.write(writers)``. Entering raises
    :class:`InputError` (before any work) when ``out`` is empty, a file, not writable, locked
    by another run, or (``exclusive``) holds a folder linked from outside it or an earlier
    output reached through a link. A folder this object created is removed again if nothing
    was written into it. Stale staging folders of an interrupted run are removed on entry.
    ``exclusive``: the folder holds one run's outputs (the earlier run's are swept); False for
    loose files written into a folder of the user's (nothing else there is looked at).
    """

    def __init__(self, out: str | os.PathLike, what: str = "--out", exclusive: bool = True):
        if str(out).strip() == "":
            raise InputError(f"{what}: give an output folder (an empty path would write into the current folder)")
        self.out = Path(out)
        self.what = what
        self.exclusive = exclusive
        self._created: list[Path] = []
        self._lock_file = None
        self.written = False

    def __enter__(self) -> OutputFolder:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"{self.what} {out}: is a file, not a folder")
        missing = [p for p in (out, *out.parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first
            lock = out / LOCK_NAME
            if lock.is_symlink():  # never opened through a link: the link goes, its target stays
                lock.unlink()
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            self._lock_file = os.fdopen(fd, "r+b")  # held until __exit__
        except OSError as err:
            self._remove_created()
            raise InputError(f"{self.what} {out}: cannot write there ({_reason(err)})") from None
        if not _lock(self._lock_file):
            self._lock_file.close()
            self._lock_file = None
            raise InputError(f"{self.what} {out}: another progreg run is writing into this folder")
        try:
            self._check_links()
        except InputError:
            self.__exit__(None, None, None)
            raise
        for stale in out.glob(f"{STAGING_PREFIX}*"):
            if stale.is_symlink():
                stale.unlink()
            else:
                shutil.rmtree(stale, ignore_errors=True)
        return self

    def _link_error(self, link: Path) -> InputError:
        target = os.path.realpath(link)
        return InputError(f"{self.what} {self.out}: {link.relative_to(self.out).as_posix()} is a symbolic link to "
                          f"{target}; progreg writes only into real folders inside its output folder: remove the "
                          f"link or choose another {self.what}")

    def _linked_folder(self, name: str) -> Path | None:
        """The first folder on the way to output ``name`` (below the output folder) that is a
        symbolic link, or None."""
        path = self.out
        for part in Path(name).parts[:-1]:
            path = path / part
            if path.is_symlink():
                return path
        return None

    def _check_links(self) -> None:
        """Refuse (before any work) a folder linked from outside the output folder, which an
        output would be written into, and an earlier output reached through a link, which the
        sweep would remove through it."""
        if not self.exclusive:  # loose files into a user's folder: each output's own path is checked when written
            return
        root = os.path.realpath(self.out)
        with os.scandir(self.out) as entries:
            for entry in entries:
                if not entry.is_symlink() or entry.is_file():  # a linked file is replaced, never written through
                    continue
                if not _inside(os.path.realpath(entry.path), root):
                    raise self._link_error(Path(entry.path))
        self.check_links(self.previous_outputs())

    def check_links(self, names) -> None:
        """Refuse (:class:`InputError` naming it) a folder on the way to any of the outputs
        ``names`` (relative paths) that is a symbolic link, wherever it points: an output
        written there would land outside the folder, or in another output's place."""
        for name in names:
            link = self._linked_folder(name)
            if link is not None:
                raise self._link_error(link)

    def __exit__(self, *exc) -> None:
        if self._lock_file is not None:
            try:
                os.unlink(self.out / LOCK_NAME)
            except OSError:
                pass
            self._lock_file.close()
            self._lock_file = None
        if not self.written:
            self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:
            try:
                p.rmdir()  # only if empty
            except OSError:
                break

    def previous_outputs(self) -> list[str]:
        """What the last run of this tool wrote here (relative paths), from its manifest."""
        manifest = self.out / MANIFEST_NAME
        if manifest.is_symlink():  # not this tool's: trusted for nothing
            return []
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [n for n in names if isinstance(n, str) and not Path(n).is_absolute() and ".." not in Path(n).parts]

    def write(self, writers: dict[str, Callable[[Path], object]]) -> None:
        """Call ``writers[name](path)`` for each output inside a staging folder, then move
        them into the folder and remove the earlier run's outputs that are not among them.
        If any writer fails, nothing in the folder changes.

        Writers marked :func:`concurrent` run on threads beside the others, which run in
        order on this thread; the last writer runs when every other one has finished (so
        that a summary written last can record the time spent writing).

        :class:`InputError` before any writer runs when an output would land in a folder that
        is a symbolic link; :class:`WriteError` naming the output for a full disk, no
        permission or a read-only file system."""
        self.check_links(writers)
        with _writing(self.out):
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))

        def run(name: str) -> None:
            with _writing(self.out / name, staging):
                writers[name](staging / name)

        try:
            with _writing(self.out, staging):
                for name in writers:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
            names = list(writers)
            beside = [n for n in names[:-1] if getattr(writers[n], "concurrent", False)]
            # Held back: a thread left running outside the pool would write on into a staging folder
            # that is being removed (and abort the interpreter's exit from inside SimpleITK).
            with interrupts_held(), ThreadPoolExecutor(max_workers=max(1, min(len(beside), os.cpu_count() or 1))) as pool:
                futures = [pool.submit(run, n) for n in beside]
                try:
                    for name in names[:-1]:
                        if name not in beside:
                            run(name)
                finally:
                    wait(futures)
            for future in futures:
                future.result()  # the first failure, raised here
            if names:
                run(names[-1])
            previous = self.previous_outputs() if self.exclusive else []
            for name in writers:
                with _writing(self.out / name):
                    (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                    (staging / name).replace(self.out / name)
            for name in sorted(set(previous) - set(writers), key=lambda n: -len(Path(n).parts)):
                stale = self.out / name
                if self._linked_folder(name) is not None:  # linked meanwhile: never removed through the link
                    continue
                if stale.is_symlink() or stale.is_file():  # a link itself goes, never its target
                    with _writing(stale):
                        stale.unlink()
                    for parent in stale.parents:  # folders (phase_*/) emptied by the sweep
                        if parent == self.out:
                            break
                        try:
                            parent.rmdir()
                        except OSError:
                            break
            if self.exclusive:
                write_text(self.out / MANIFEST_NAME, json.dumps({"outputs": sorted(writers)}, indent=1) + "\n")
            self.written = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def write_all(out: str | os.PathLike, writers: dict[str, Callable[[Path], object]], what: str = "--out",
              exclusive: bool = True) -> None:
    """:class:`OutputFolder` in one call, for outputs that need no work after the check."""
    with OutputFolder(out, what, exclusive) as folder:
        folder.write(writers)
