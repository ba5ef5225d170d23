"""Where every benchmark's table goes: printed, and written to ``benchmarks/results/``."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(lines: list[str], name: str) -> Path:
    """Print the markdown ``lines`` and write them to ``benchmarks/results/<name>``
    (atomically: an interrupted benchmark leaves the previous table intact)."""
    text = "\n".join(lines) + "\n"
    print(text)
    path = RESULTS / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
