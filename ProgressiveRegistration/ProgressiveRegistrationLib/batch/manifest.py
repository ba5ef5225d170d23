"""The batch manifest: one CSV row per case, checked whole before anything runs.

Columns (header names, any order):

* a pair: ``id, fixed, moving`` and optionally ``fixed_landmarks, moving_landmarks,
  moving_segmentation``;
* a 4DCT: ``id, phases`` (a folder of DICOM series or image files, or a glob such as
  ``scans/p7/phase_*.nii.gz``) and optionally ``reference`` (default 0).

Both kinds may share one manifest (unused cells empty). Relative paths are relative to the
manifest's folder. Every problem (a missing column, a duplicate or unusable id, an id that
is the name of a file the study writes beside the case folders, a missing file, a half-given
landmark pair, a bad reference) is collected and reported at once.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError

PAIR_COLUMNS = ("fixed", "moving")
OPTIONAL_PAIR_COLUMNS = ("fixed_landmarks", "moving_landmarks", "moving_segmentation")
FOURD_COLUMNS = ("phases", "reference")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: The files a batch writes into its output folder beside the case folders (``OUT/<id>/``); a
#: case id cannot be one of them (compared ignoring case: macOS and Windows file systems do).
#: Its other names there are hidden (``.progreg*``), which an id cannot be.
STUDY_FILES = ("cohort.csv", "cohort.html")


@dataclass(frozen=True)
class Case:
    """One case of a manifest: a pair (``fixed``, ``moving``, optional landmarks and
    segmentation) or a 4DCT (``phases``, ``reference``); every path absolute."""

    id: str
    fixed: Path | None = None
    moving: Path | None = None
    fixed_landmarks: Path | None = None
    moving_landmarks: Path | None = None
    moving_segmentation: Path | None = None
    phases: tuple[Path, ...] = field(default_factory=tuple)
    reference: int = 0

    @property
    def is_4d(self) -> bool:
        return bool(self.phases)

    def inputs(self) -> list[Path]:
        """Every input path of the case (files or folders), for its fingerprint."""
        if self.is_4d:
            return list(self.phases)
        return [p for p in (self.fixed, self.moving, self.fixed_landmarks, self.moving_landmarks,
                            self.moving_segmentation) if p is not None]


def _phases(cell: str, base: Path) -> tuple[Path, ...]:
    path = Path(cell)
    path = path if path.is_absolute() else base / path
    if any(ch in cell for ch in "*?["):
        return tuple(Path(p) for p in sorted(glob.glob(str(path))))
    return (path,) if path.exists() else ()


def _path(row: dict, column: str, required: bool, where: str, base: Path, problems: list[str]) -> Path | None:
    """The absolute path in ``row[column]`` (relative to ``base``), or None; problems noted."""
    cell = row.get(column, "")
    if not cell:
        if required:
            problems.append(f"{where}: {column} is empty")
        return None
    p = Path(cell)
    p = p if p.is_absolute() else base / p
    if not p.exists():
        problems.append(f"{where}: {column} {cell}: no such file or folder")
    return p


def read_manifest(path: str | Path) -> list[Case]:
    """The cases of the manifest at ``path``; InputError listing every problem found."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in reader.fieldnames or []]
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable CSV manifest ({err})") from None
    base = path.resolve().parent
    problems: list[str] = []
    if "id" not in header:
        problems.append("no 'id' column")
    pair = all(c in header for c in PAIR_COLUMNS)
    fourd = "phases" in header
    if not pair and not fourd:
        problems.append("needs the columns fixed and moving (pairs) or phases (4DCT)")
    unknown = set(header) - {"id", *PAIR_COLUMNS, *OPTIONAL_PAIR_COLUMNS, *FOURD_COLUMNS}
    if unknown:
        problems.append(f"unknown column(s) {', '.join(sorted(unknown))}")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))
    if not rows:
        raise InputError(f"{path}: no cases")
    cases, seen = [], {}
    for n, row in enumerate(rows, start=2):  # line numbers as an editor shows them (1 is the header)
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        where = f"line {n}"
        case_id = row.get("id", "")
        if not ID_PATTERN.match(case_id):
            problems.append(f"{where}: id {case_id!r} is empty or not usable as a folder name "
                            "(letters, digits, '.', '_', '-')")
        elif case_id.lower() in STUDY_FILES:
            problems.append(f"{where}: id {case_id!r} is the name of the study's own {case_id.lower()} in the "
                            "output folder; choose another id")
        elif case_id in seen:
            problems.append(f"{where}: duplicate id {case_id!r} (also on line {seen[case_id]})")
        else:
            seen[case_id] = n

        def file(column, required, row=row, where=f"{where} ({case_id})"):
            return _path(row, column, required, where, base, problems)

        if row.get("phases"):
            phases = _phases(row["phases"], base)
            if not phases:
                problems.append(f"{where} ({case_id}): phases {row['phases']}: nothing found")
            elif len(phases) == 1 and not phases[0].is_dir():
                problems.append(f"{where} ({case_id}): phases {row['phases']}: one image; a 4DCT needs a folder "
                                "or a glob matching several")
            try:
                reference = int(row.get("reference") or 0)
            except ValueError:
                problems.append(f"{where} ({case_id}): reference {row.get('reference')!r} is not a whole number")
                reference = 0
            if reference < 0 or (len(phases) > 1 and reference >= len(phases)):
                problems.append(f"{where} ({case_id}): reference {reference} is not one of the {len(phases)} phases")
            if any(row.get(c) for c in (*PAIR_COLUMNS, *OPTIONAL_PAIR_COLUMNS)):
                problems.append(f"{where} ({case_id}): give either phases or fixed/moving, not both")
            cases.append(Case(case_id, phases=phases, reference=reference))
            continue
        fixed, moving = file("fixed", True), file("moving", True)
        fl, ml = file("fixed_landmarks", False), file("moving_landmarks", False)
        if bool(row.get("fixed_landmarks")) != bool(row.get("moving_landmarks")):
            problems.append(f"{where} ({case_id}): give both fixed_landmarks and moving_landmarks, or neither")
        cases.append(Case(case_id, fixed, moving, fl, ml, file("moving_segmentation", False)))
    if problems:
        raise InputError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    return cases
