"""Atomic writes: a file or a folder of outputs appears whole or not at all.

Every output of the library goes through :func:`write_file` (one file) or an
:class:`OutputFolder` (a folder of outputs; :func:`write_all` for short). A file is written
under a temporary name beside its destination and renamed into place; a folder's outputs
are staged in a hidden folder inside the output folder itself (the same file system, so
the final renames are atomic even when the folder is a mount point), so that a crash, a
full disk, a signal or a bad input never leaves a half-written file, and a user's existing
file is replaced only by a complete one.

An output folder is locked while a run writes into it (a second run into the same folder
is refused), is checked before any work (not a file, writable), and holds only one run's
outputs: the files an earlier run of this tool wrote there that the new run does not
write are removed; files this tool did not write are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from .errors import InputError

#: Hidden names inside an output folder: the lock, the staging folders, the list of outputs.
LOCK_NAME = ".progreg.lock"
STAGING_PREFIX = ".progreg-staging-"
MANIFEST_NAME = ".progreg-outputs.json"


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` for a temporary path beside ``path`` (same suffix, so that writers
    that pick the format by suffix still do), then rename it to ``path``."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the output gets the mode any new file of the
    # user's gets, as if written directly.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def concurrent(write: Callable[[Path], object]) -> Callable[[Path], object]:
    """Mark a writer of :meth:`OutputFolder.write` as one to run on a thread beside the
    others: it shares no state with them and spends its time outside the GIL (ITK's image
    writers compress and write without it; matplotlib's figures hold it)."""
    write.concurrent = True
    return write


def write_text(path: str | os.PathLike, text: str) -> None:
    write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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


class OutputFolder:
    """An output folder, checked, locked and swept on entry; outputs written with :meth:`write`.

    ``with OutputFolder(out) as folder: ...work...; folder.write(writers)``. Entering raises
    :class:`InputError` (before any work) when ``out`` is empty, a file, not writable, or
    locked by another run. A folder this object created is removed again if nothing was
    written into it. Stale staging folders of an interrupted run are removed on entry.
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
            self._lock_file = open(out / LOCK_NAME, "a+b")  # noqa: SIM115 (held until __exit__)
        except OSError as err:
            self._remove_created()
            raise InputError(f"{self.what} {out}: cannot write there ({err.strerror or err})") from None
        if not _lock(self._lock_file):
            self._lock_file.close()
            self._lock_file = None
            raise InputError(f"{self.what} {out}: another progreg run is writing into this folder")
        for stale in out.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        return self

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
        try:
            names = json.loads((self.out / MANIFEST_NAME).read_text(encoding="utf-8"))["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [n for n in names if isinstance(n, str) and not Path(n).is_absolute() and ".." not in Path(n).parts]

    def write(self, writers: dict[str, Callable[[Path], object]]) -> None:
        """Call ``writers[name](path)`` for each output inside a staging folder, then move
        them into the folder and remove the earlier run's outputs that are not among them.
        If any writer fails, nothing in the folder changes.

        Writers marked :func:`concurrent` run on threads beside the others, which run in
        order on this thread; the last writer runs when every other one has finished (so
        that a summary written last can record the time spent writing)."""
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        try:
            for name in writers:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
            names = list(writers)
            beside = [n for n in names[:-1] if getattr(writers[n], "concurrent", False)]
            with ThreadPoolExecutor(max_workers=max(1, min(len(beside), os.cpu_count() or 1))) as pool:
                futures = [pool.submit(writers[n], staging / n) for n in beside]
                try:
                    for name in names[:-1]:
                        if name not in beside:
                            writers[name](staging / name)
                finally:
                    wait(futures)
            for future in futures:
                future.result()  # the first failure, raised here
            if names:
                writers[names[-1]](staging / names[-1])
            previous = self.previous_outputs() if self.exclusive else []
            for name in writers:
                (self.out / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).replace(self.out / name)
            for name in sorted(set(previous) - set(writers), key=lambda n: -len(Path(n).parts)):
                stale = self.out / name
                if stale.is_file():
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
