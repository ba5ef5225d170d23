"""Landmark files: reading every common format, writing Slicer markups.

Formats read (the kind is told by the content, not only the suffix):

* DIR-Lab ``.txt``: ``x y z`` per line, 1-based voxel indices (tabs or spaces, CRLF ok).
* Slicer markups ``.mrk.json`` and ``.fcsv``: mm, in the file's ``coordinateSystem``
  (LPS or RAS; old ``.fcsv`` numeric codes 0 = RAS, 1 = LPS).
* elastix/transformix point files: ``point`` (mm, LPS) or ``index`` (0-based voxels)
  header, then the count, then one point per line. transformix ``outputpoints.txt``
  lines (``OutputPoint = [ x y z ]``) are read too.
* CSV in mm with the frame stated in a header: columns ``l,p,s`` or ``r,a,s``, or
  ``x,y,z`` with a ``# CoordinateSystem = LPS|RAS`` line.

Everything is converted to LPS mm (:meth:`Landmarks.to_lps`), given the image grid (or
just the spacing) for voxel-indexed files. A point that cannot be read is one
:class:`InputError` naming the file and the point: ``file:line`` (1-based, every line
counted, as an editor shows it) in text files, ``file: control point n (label)`` (1-based
over the file) in ``.mrk.json``, where a point without a position or not placed
(``positionStatus`` undefined, preview or missing: not a landmark) is refused.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import write_text
from ..core.checks import check_pairs
from ..core.errors import InputError
from ..core.grid import Grid

RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass
class Landmarks:
    """Points as read from a file.

    Attributes:
        points: (n, 3) array, in the frame ``frame``.
        frame: 'lps' (mm), 'index0' (0-based voxel i, j, k) or 'index1' (1-based, DIR-Lab).
        labels: one label per point.
    """

    points: np.ndarray
    frame: str
    labels: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        if not self.labels:
            self.labels = [f"{i + 1}" for i in range(len(self.points))]

    def __len__(self) -> int:
        return len(self.points)

    @property
    def in_voxels(self) -> bool:
        return self.frame in ("index0", "index1")

    def index0(self) -> np.ndarray:
        return self.points - 1.0 if self.frame == "index1" else self.points

    def to_lps(self, grid: Grid | None = None, spacing_mm=None) -> np.ndarray:
        """(n, 3) LPS mm. Voxel files need ``grid`` or ``spacing_mm`` (origin 0, identity)."""
        if not self.in_voxels:
            return self.points.copy()
        if grid is None:
            if spacing_mm is None:
                raise InputError(f"{self.source}: landmarks are voxel indices; give the voxel spacing (--spacing) or an image")
            grid = Grid((1, 1, 1), tuple(float(s) for s in spacing_mm), (0.0, 0.0, 0.0))
        return grid.points_to_lps(self.index0())


def _floats(tokens: list[str], where: str) -> list[float]:
    """The numbers of ``tokens``; ``where`` names the place in messages (``file:line``, or
    ``file: control point n``)."""
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        if any(not t.strip() for t in tokens):
            raise InputError(f"{where}: a coordinate is empty") from None
        raise InputError(f"{where}: expected numbers, got {' '.join(tokens)!r}") from None
    if not np.all(np.isfinite(values)):
        raise InputError(f"{where}: NaN or infinite coordinate")
    return values


def _columns(row: list[str], needed: dict[str, int], where: str, line: str) -> list[str]:
    """The cells of ``row`` at the ``needed`` columns (name: index), or one error naming the
    line and what is missing."""
    missing = [name for name, i in needed.items() if i >= len(row)]
    if missing:
        raise InputError(f"{where}: {len(row)} column(s) where {max(needed.values()) + 1} are needed "
                         f"(no {', '.join(missing)}): {line.strip()!r}")
    return [row[i] for i in needed.values()]


def _read_dirlab(text: str, path) -> Landmarks:
    pts = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 3:
            raise InputError(f"{path}:{n}: expected 'x y z', got {line.strip()!r}")
        pts.append(_floats(tokens, f"{path}:{n}"))
    return Landmarks(np.array(pts), "index1", source=str(path))


def _read_elastix(text: str, path) -> Landmarks:
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    kind = lines[0][1].lower()
    try:
        count = int(lines[1][1])
    except (IndexError, ValueError):
        raise InputError(f"{path}: elastix point file needs the number of points after its first line") from None
    pts = []
    for n, ln in lines[2:]:
        if len(ln.split()) != 3:
            raise InputError(f"{path}:{n}: expected 'x y z', got {ln!r}")
        pts.append(_floats(ln.split(), f"{path}:{n}"))
    if len(pts) != count:
        raise InputError(f"{path}: header says {count} points, file holds {len(pts)}")
    return Landmarks(np.array(pts), "lps" if kind == "point" else "index0", source=str(path))


def _read_transformix_output(text: str, path) -> Landmarks:
    pts = []
    for n, line in enumerate(text.splitlines(), 1):
        m = re.search(r"OutputPoint\s*=\s*\[([^\]]*)\]", line)
        if m:
            pts.append(_floats(m.group(1).split(), f"{path}:{n}"))
    return Landmarks(np.array(pts), "lps", source=str(path))


def _frame_word(value: str, path) -> str:
    v = value.strip().upper()
    if v in ("LPS", "1"):
        return "lps"
    if v in ("RAS", "0"):
        return "ras"
    raise InputError(f"{path}: unknown coordinate system {value!r} (expected LPS or RAS)")


def _read_fcsv(text: str, path) -> Landmarks:
    frame = "ras"  # Slicer's default before the CoordinateSystem line existed
    columns = None
    rows = []  # (line number, cells, line)
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            m = re.match(r"#\s*CoordinateSystem\s*=\s*(\S+)", line)
            if m:
                frame = _frame_word(m.group(1), path)
            m = re.match(r"#\s*columns\s*=\s*(.*)", line)
            if m:
                columns = [c.strip() for c in m.group(1).split(",")]
        elif line.strip():
            rows.append((n, next(csv.reader([line])), line))
    columns = columns or ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label"]
    if not all(c in columns for c in ("x", "y", "z")):
        raise InputError(f"{path}: its '# columns =' line names no x, y, z columns")
    needed = {c: columns.index(c) for c in ("x", "y", "z")}
    pts = np.array([_floats(_columns(r, needed, f"{path}:{n}", line), f"{path}:{n}")
                    for n, r, line in rows]).reshape(-1, 3)
    il = columns.index("label") if "label" in columns else None
    labels = [r[il] if il is not None and il < len(r) else str(i + 1) for i, (_, r, _) in enumerate(rows)]
    if frame == "ras":
        pts = pts * RAS_FROM_LPS
    return Landmarks(pts, "lps", labels, source=str(path))


def _read_mrk_json(text: str, path) -> Landmarks:
    try:
        doc = json.loads(text)
        markups = doc["markups"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a Slicer markups JSON file") from None
    if not isinstance(markups, list):
        raise InputError(f"{path}: not a Slicer markups JSON file ('markups' is not a list)")
    pts, labels = [], []
    for markup in markups:
        if not isinstance(markup, dict):
            raise InputError(f"{path}: not a Slicer markups JSON file (a markup is not an object)")
        frame = _frame_word(str(markup.get("coordinateSystem", "LPS")), path)
        points = markup.get("controlPoints") or []
        if not isinstance(points, list):
            raise InputError(f"{path}: not a Slicer markups JSON file ('controlPoints' is not a list)")
        for cp in points:
            # Counted over the whole file, 1-based, as the point list shows them.
            where = f"{path}: control point {len(pts) + 1}"
            if not isinstance(cp, dict):
                raise InputError(f"{where}: not an object")
            if cp.get("label"):
                where += f" ({cp['label']})"
            position, status = cp.get("position"), cp.get("positionStatus", "defined")
            if position is None or status in ("undefined", "preview", "missing"):
                # Slicer writes an unplaced point with an empty position ("") and says so in its
                # status; any position it carries is not a landmark, and pairs must not shift.
                said = "has no position" if position is None else f"is not placed (positionStatus {status!r})"
                raise InputError(f"{where}: {said}; place it or delete it")
            if not isinstance(position, list) or len(position) != 3:
                raise InputError(f"{where}: position must be 3 numbers, got {json.dumps(position)}")
            p = np.array(_floats([str(v) for v in position], where))
            pts.append(p * RAS_FROM_LPS if frame == "ras" else p)
            labels.append(cp.get("label") or str(len(labels) + 1))
    return Landmarks(np.array(pts).reshape(-1, 3), "lps", labels, source=str(path))


def _read_csv(text: str, path) -> Landmarks:
    frame = None
    body = []  # (line number, line)
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"#\s*coordinate\s*system\s*[=:]\s*(\S+)", line, re.IGNORECASE)
        if m:
            frame = _frame_word(m.group(1), path)
        elif line.strip() and not line.startswith("#"):
            body.append((n, line))
    header = [h.strip().lower() for h in next(csv.reader([body[0][1]]))] if body else []
    for names, f in ((("l", "p", "s"), "lps"), (("r", "a", "s"), "ras"), (("x", "y", "z"), frame)):
        if all(n in header for n in names):
            if f is None:
                raise InputError(f"{path}: CSV columns x,y,z need a '# CoordinateSystem = LPS' (or RAS) line")
            cols = [header.index(n) for n in names]
            break
    else:
        raise InputError(f"{path}: CSV needs columns l,p,s or r,a,s (mm), or x,y,z with a CoordinateSystem line")
    needed = dict(zip(names, cols))
    if "label" in header:
        needed["label"] = header.index("label")
    pts, labels = [], []
    for n, line in body[1:]:
        cells = _columns(next(csv.reader([line])), needed, f"{path}:{n}", line)
        pts.append(_floats(cells[:3], f"{path}:{n}"))
        labels += cells[3:]
    pts = np.array(pts).reshape(-1, 3)
    return Landmarks(pts * RAS_FROM_LPS if f == "ras" else pts, "lps", labels, source=str(path))


def read_landmarks(path) -> Landmarks:
    """Read a landmark file in any supported format (see the module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InputError(f"{path}: no such landmark file") from None
    except PermissionError:
        try:
            p.stat()
        except OSError:
            raise InputError(f"{path}: permission denied (a folder on its path cannot be read)") from None
        raise InputError(f"{path}: permission denied (the landmark file exists but cannot be read)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read landmark file ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None
    name = p.name.lower()
    first = next((ln.strip().lower() for ln in text.splitlines() if ln.strip()), "")
    if name.endswith(".json"):
        lm = _read_mrk_json(text, path)
    elif name.endswith(".fcsv") or first.startswith("# markups fiducial"):
        lm = _read_fcsv(text, path)
    elif first in ("point", "index"):
        lm = _read_elastix(text, path)
    elif "outputpoint" in text.lower():
        lm = _read_transformix_output(text, path)
    elif name.endswith(".csv"):
        lm = _read_csv(text, path)
    else:
        lm = _read_dirlab(text, path)
    if len(lm) == 0:
        raise InputError(f"{path}: no landmarks in file")
    return lm


def write_markups_json(path, points_lps: np.ndarray, labels: list[str] | None = None, name: str = "F") -> None:
    """Write a Slicer ``.mrk.json`` point list (LPS), atomically."""
    labels = labels or [f"{name}-{i + 1}" for i in range(len(points_lps))]
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
            "controlPoints": [{"id": str(i + 1), "label": lab, "position": [float(v) for v in p],
                               "positionStatus": "defined"} for i, (p, lab) in enumerate(zip(points_lps, labels))],
        }],
    }
    write_text(path, json.dumps(doc, indent=1))


def read_point_pairs(fixed_path, moving_path, fixed_grid: Grid, moving_grid: Grid
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(fixed LPS, moving LPS, labels) of two landmark files; voxel files use their image's grid."""
    fixed_lm, moving_lm = read_landmarks(fixed_path), read_landmarks(moving_path)
    fixed, moving = fixed_lm.to_lps(grid=fixed_grid), moving_lm.to_lps(grid=moving_grid)
    check_pairs(fixed, moving, f"{fixed_path} / {moving_path}")
    return fixed, moving, fixed_lm.labels
