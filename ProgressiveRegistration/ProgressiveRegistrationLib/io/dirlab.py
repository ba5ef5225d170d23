"""The DIR-Lab 4DCT data set: the case table, file discovery, the raw image reader.

The evaluation of a model on it is :func:`evaluation.evaluate_dirlab`.

Folder layout of the official download::

    Case1Pack/ExtremePhases/Case1_300_T00_xyz.txt        (cases 1-5)
    Case6Pack/extremePhases/case6_dirLab300_T00_xyz.txt  (cases 6-10)
    Case8Deploy/...                                      (case 8, official name)
    CaseNPack/Images/caseN_T00_s.img                     (optional raw images)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from .landmarks import read_landmarks


@dataclass(frozen=True)
class Case:
    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    #: Paper Table II, TRE before registration: (mean, sd) mm.
    paper_before_mm: tuple[float, float]


CASES = {
    1: Case((256, 256, 94), (0.97, 0.97, 2.5), (3.89, 2.78)),
    2: Case((256, 256, 112), (1.16, 1.16, 2.5), (4.34, 3.90)),
    3: Case((256, 256, 104), (1.15, 1.15, 2.5), (6.94, 4.05)),
    4: Case((256, 256, 99), (1.13, 1.13, 2.5), (9.83, 4.85)),
    5: Case((256, 256, 106), (1.10, 1.10, 2.5), (7.48, 5.50)),
    6: Case((512, 512, 128), (0.97, 0.97, 2.5), (10.89, 6.96)),
    7: Case((512, 512, 136), (0.97, 0.97, 2.5), (11.03, 7.42)),
    8: Case((512, 512, 128), (0.97, 0.97, 2.5), (14.99, 9.00)),
    9: Case((512, 512, 128), (0.97, 0.97, 2.5), (7.92, 3.97)),
    10: Case((512, 512, 120), (0.97, 0.97, 2.5), (7.30, 6.34)),
}

_CASE_RE = re.compile(r"case(\d+)", re.IGNORECASE)


def case_of_path(path) -> int | None:
    """The DIR-Lab case number named in a file or folder name, if any."""
    for part in reversed(Path(path).parts):
        m = _CASE_RE.search(part)
        if m and int(m.group(1)) in CASES:
            return int(m.group(1))
    return None


def case_folder(root, case: int) -> Path | None:
    root = Path(root)
    for name in (f"Case{case}Pack", f"Case{case}Deploy", f"case{case}Pack", f"case{case}Deploy"):
        if (root / name).is_dir():
            return root / name
    return None


def extreme_phase_files(root, case: int) -> tuple[Path, Path] | None:
    """(T00, T50) 300-landmark files of a case, in either official naming, or None."""
    folder = case_folder(root, case)
    if folder is None:
        return None
    found = {}
    for p in folder.rglob("*.txt"):
        name = p.name.lower()
        if "300" in name and "_xyz" in name:
            for phase in ("t00", "t50"):
                if f"_{phase}_" in name:
                    found[phase] = p
    if set(found) != {"t00", "t50"}:
        return None
    return found["t00"], found["t50"]


def image_files(root, case: int) -> tuple[Path, Path] | None:
    """(T00, T50) raw images of a case if present."""
    folder = case_folder(root, case)
    if folder is None:
        return None
    found = {}
    for p in folder.rglob("*.img"):
        for phase in ("T00", "T50"):
            if f"_{phase.lower()}" in p.name.lower():
                found[phase] = p
    return (found["T00"], found["T50"]) if len(found) == 2 else None


def parse_cases(text: str) -> list[int]:
    """'1-10', '1,3,5-7' -> sorted case numbers."""
    cases = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"--cases: cannot parse {part!r} (use e.g. 1-10 or 1,3,8)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        cases.update(range(lo, hi + 1))
    bad = sorted(c for c in cases if c not in CASES)
    if bad:
        raise InputError(f"--cases: DIR-Lab has cases 1-10, not {bad}")
    return sorted(cases)


def case_points_mm(root, case: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (T00, inhale) and moving (T50, exhale) landmarks in mm (origin 0, identity)."""
    files = extreme_phase_files(root, case)
    if files is None:
        raise InputError(f"{root}: no extreme-phase landmark files for case {case}")
    spacing = CASES[case].spacing_mm
    fixed, moving = (read_landmarks(f).to_lps(spacing_mm=spacing) for f in files)
    if len(fixed) != len(moving):
        raise InputError(f"case {case}: {len(fixed)} T00 but {len(moving)} T50 landmarks")
    return fixed, moving


def read_raw(path: str | os.PathLike, size: tuple[int, int, int] | None = None,
             spacing_mm: tuple[float, float, float] | None = None) -> sitk.Image:
    """A DIR-Lab raw image: little-endian int16, no header, dims and spacing from the case table.

    The result has origin 0 and identity direction, so that a 1-based landmark (x, y, z)
    sits at LPS ``(x - 1, y - 1, z - 1) * spacing`` (the landmarks index the raw array).
    """
    if size is None or spacing_mm is None:
        case = case_of_path(path)
        if case is None:
            raise InputError(f"{path}: cannot tell the DIR-Lab case from the file name; give its size and spacing")
        size, spacing_mm = CASES[case].size, CASES[case].spacing_mm
    data = np.fromfile(path, dtype="<i2")
    if data.size != int(np.prod(size)):
        raise InputError(f"{path}: {data.size} voxels, but the case table says {size[0]}x{size[1]}x{size[2]}")
    image = sitk.GetImageFromArray(data.reshape(size[2], size[1], size[0]))
    image.SetSpacing([float(s) for s in spacing_mm])
    return image
