"""The one exception type that means "the user's input is wrong".

Everything that reads files, checks images or validates configuration raises
:class:`InputError` with a message meant for a person. The command line turns it into one
line on stderr and exit code 2; the Slicer module shows it in a message box.

An output that cannot be written (a full disk, no permission, a read-only file system) is
a :class:`WriteError`: an InputError naming the path, so that it reaches the user the same
way, as one line.
"""

from __future__ import annotations

import errno
import os

#: Exit code of the command line for bad input (argparse uses the same code).
EXIT_BAD_INPUT = 2

NO_SPACE = "no space left on device"

#: The causes of a failed write that the user can act on, by errno, in words.
WRITE_FAILURES = {errno.ENOSPC: NO_SPACE, errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EROFS: "read-only file system"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    WRITE_FAILURES[errno.EDQUOT] = "disk quota exceeded"
#: The causes that mean "no room": said as "<cause> while writing <path>".
_SPACE = {NO_SPACE, "disk quota exceeded"}


class InputError(ValueError):
    """Bad input: a missing or unreadable file, a wrong dimension, NaNs, mismatched lists."""


class WriteError(InputError):
    """An output could not be written: ``path`` (what was being written), ``reason`` (why,
    one of :data:`WRITE_FAILURES`' words)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{reason} while writing {path}" if reason in _SPACE else f"cannot write to {path}: {reason}")


def write_error(err: BaseException, path: str | os.PathLike) -> WriteError | None:
    """``err`` as a :class:`WriteError` naming ``path`` when it is a failed write the user can
    act on (a WriteError about a temporary or staged name, or an OSError of
    :data:`WRITE_FAILURES`); None for anything else."""
    if isinstance(err, WriteError):
        return WriteError(path, err.reason)
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        return WriteError(path, WRITE_FAILURES[err.errno])
    return None
