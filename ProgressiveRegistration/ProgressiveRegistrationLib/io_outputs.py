"""Writing a set of outputs all-or-nothing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def write_all(out: Path, writers: dict) -> None:
    """Call ``writers[name](path)`` for each output inside a staging folder beside ``out``,
    then move them into ``out``. If any writer fails, nothing new is left in ``out``
    (and ``out`` itself is not created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, write in writers.items():
            write(staging / name)
        out.mkdir(exist_ok=True)
        for name in writers:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
