"""Atomic writes: a file or a set of files appears whole or not at all.

Every output of the library goes through :func:`write_file` (one file) or
:func:`write_all` (a folder of outputs): it is written under a temporary name beside its
destination and renamed into place, so that a crash, a full disk or a bad input never
leaves a half-written file, and a user's existing file is replaced only by a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


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


def write_text(path: str | os.PathLike, text: str) -> None:
    write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_all(out: str | os.PathLike, writers: dict[str, Callable[[Path], object]]) -> None:
    """Call ``writers[name](path)`` for each output inside a staging folder beside ``out``,
    then move them into ``out``. If any writer fails, nothing new is left in ``out``
    (and ``out`` itself is not created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, write in writers.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        out.mkdir(exist_ok=True)
        for name in writers:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
