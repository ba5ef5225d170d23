"""The quality checks' tolerances and how their values read (AAPM TG-132 and the project's).

Each check's :class:`Tolerance` judges its value as PASS, WARN or FAIL; the defaults are
:data:`DEFAULT_TOLERANCES` (TG-132's numbers where it gives one, each row saying which), a
small YAML/JSON file may replace some (:func:`load_tolerances`). Numbers and text only: the
Slicer module shows these rows without loading the engine (:mod:`.quality` computes them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import InputError

#: The overall verdict when nothing measured the accuracy (no landmarks, no contours).
UNVERIFIED = "UNVERIFIED"
TG132 = "AAPM TG-132"
PROJECT = "project"


@dataclass(frozen=True)
class Tolerance:
    """A check's limits: PASS up to ``warn``, WARN up to ``fail``, FAIL beyond (reversed when
    ``higher_is_better``); ``fail`` None: the check can warn but never fails. ``limit``: for a
    share check, the per-item limit (e.g. a landmark's TRE in mm) beyond which an item counts.
    ``tg132``: which of ``"warn"``, ``"fail"``, ``"limit"`` are AAPM TG-132's numbers (the
    rest are the project's); ``file``: the tolerance file that replaced some of them."""

    warn: float
    fail: float | None
    higher_is_better: bool = False
    tg132: tuple[str, ...] = ()
    limit: float | None = None
    file: str | None = None

    def verdict(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a"
        sign = -1.0 if self.higher_is_better else 1.0
        if sign * value <= sign * self.warn:
            return "PASS"
        if self.fail is None:
            return "WARN"
        return "WARN" if sign * value <= sign * self.fail else "FAIL"

    @property
    def can_fail(self) -> bool:
        return self.fail is not None

    @property
    def source(self) -> str:
        """Where the numbers come from, as the report's "tolerance from" column says it."""
        if self.file:
            return self.file
        given = ["warn", "fail", "limit"] if self.limit is not None else ["warn", "fail"]
        if self.fail is None:
            given.remove("fail")
        ours = [g for g in given if g not in self.tg132]
        if not ours:
            return TG132
        if len(ours) == len(given):
            return PROJECT
        return f"{TG132} ({', '.join(g for g in given if g in self.tg132)}); {PROJECT} ({', '.join(ours)})"


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "tre_mean_mm": Tolerance(1.5, 2.0, tg132=("fail",)),
    "tre_outliers_percent": Tolerance(0.0, 10.0, tg132=("limit",), limit=5.0),
    "tre_p95_mm": Tolerance(3.0, None),
    "folding_percent": Tolerance(0.0, 0.01, tg132=("warn",)),
    "jacobian_min": Tolerance(0.2, None, higher_is_better=True),
    "lung_jacobian_outside_percent": Tolerance(5.0, 10.0),
    "lung_ncc_gain": Tolerance(0.05, 0.01, higher_is_better=True),
    "lung_ncc_after": Tolerance(0.8, None, higher_is_better=True),
    "lung_abs_hu_difference_after": Tolerance(60.0, None),
    "dice": Tolerance(0.85, 0.8, higher_is_better=True, tg132=("warn", "fail")),
    "mean_surface_distance_mm": Tolerance(2.0, 3.0, tg132=("warn", "fail")),
    "hd95_mm": Tolerance(3.0, None),
}

#: What TG-132 says where a default tolerance is its number (the report's legend).
TG132_BASIS = {
    "tre_mean_mm": "mean landmark TRE ≤ 2 mm (the voxel size); the 1.5 mm warning is the project's",
    "tre_outliers_percent": "maximum landmark TRE 5 mm; the project judges the share of landmarks beyond it "
                            "(any: WARN, naming them; more than 10 %: FAIL)",
    "folding_percent": "no negative Jacobian determinant (any folding warns); the project fails more than 0.01 % "
                       "of the body",
    "dice": "Dice 0.8–0.9",
    "mean_surface_distance_mm": "mean distance to agreement within the contouring uncertainty, 2–3 mm",
}

#: Checks of earlier versions, and what became of them (for a tolerance file that names one).
RETIRED = {
    "tre_max_mm": "the maximum is reported; the landmarks beyond TG-132's 5 mm are judged by tre_outliers_percent "
                  "({warn, fail} in %, limit in mm)",
    "inverse_consistency_mean_mm": "the inverse consistency through the field's own inverse cannot fail; it is "
                                   "reported as information",
    "inverse_consistency_p95_mm": "reported as information",
    "inverse_consistency_max_mm": "reported as information",
}

#: Which checks measure the accuracy (the others its plausibility).
ACCURACY_CHECKS = ("tre_mean_mm", "tre_outliers_percent", "tre_p95_mm", "dice", "mean_surface_distance_mm", "hd95_mm")

#: What each check measures, for the report's table.
CHECK_LABELS = {
    "tre_mean_mm": "landmark TRE, mean (mm)",
    "tre_outliers_percent": "landmarks with TRE > {limit} mm (%)",
    "tre_p95_mm": "landmark TRE, 95th percentile (mm)",
    "folding_percent": "folding: body voxels with det J ≤ 0 (%)",
    "jacobian_min": "Jacobian determinant, minimum in the body",
    "lung_jacobian_outside_percent": "lung voxels with det J outside [0.5, 2] (%)",
    "lung_ncc_gain": "similarity in the lungs: local NCC after − before",
    "lung_ncc_after": "similarity in the lungs: local NCC after",
    "lung_abs_hu_difference_after": "similarity in the lungs: mean |ΔHU| after",
    "dice": "contour {label}: Dice",
    "mean_surface_distance_mm": "contour {label}: mean surface distance (mm)",
    "hd95_mm": "contour {label}: Hausdorff distance, 95th percentile (mm)",
}

#: The information rows (no tolerance, outside the verdict).
INFO_LABELS = {
    "tre_max_mm": "landmark TRE, maximum (mm)",
    "landmarks_worse_after_refinement": "landmarks the refinement moved more than 0.5 mm further from their partner "
                                        "(count)",
    "inverse_consistency_mean_mm": "inverse consistency |φ∘φ⁻¹ − id| in the lungs, mean (mm)",
    "inverse_consistency_p95_mm": "inverse consistency in the lungs, 95th percentile (mm)",
    "inverse_consistency_max_mm": "inverse consistency in the lungs, maximum (mm)",
    "lung_volume_change_percent": "lung volume change, moving against fixed (∫ det J over the lungs, %)",
    "lung_ncc_before": "similarity in the lungs: local NCC before registration",
    "lung_abs_hu_difference_before": "similarity in the lungs: mean |ΔHU| before registration (HU)",
    "residual_in_lungs_mean": "doubt (1 − local NCC) in the lungs, mean",
    "pleura_jacobian_min": "Jacobian determinant at the pleura (within one voxel of the lungs' surface), minimum",
}
INVERSE_NOTE = ("cannot fail: φ⁻¹ is the fixed-point inverse of this same field (core/transforms.py), so this "
                "measures how well that inversion converged, not the registration's accuracy; TG-132's consistency "
                "test needs a second registration, moving to fixed")


def load_tolerances(path: str | Path | None) -> dict[str, Tolerance]:
    """The default tolerances, with those of ``path`` (YAML or JSON: ``{check: {warn: x, fail: y}}``;
    ``fail: null`` makes a check warn-only; ``limit``: the per-item limit of a share check) in
    their place; InputError for an unknown check or a malformed entry."""
    tolerances = dict(DEFAULT_TOLERANCES)
    if path is None:
        return tolerances
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--tolerances {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        raise InputError(f"--tolerances {path}: cannot parse it ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"--tolerances {path}: expected a mapping of check names to {{warn, fail}}")
    for name, entry in data.items():
        if name in RETIRED:
            raise InputError(f"--tolerances {path}: {name} is no longer a check: {RETIRED[name]}")
        if name not in tolerances:
            raise InputError(f"--tolerances {path}: unknown check {name!r} (known: {', '.join(tolerances)})")
        old = tolerances[name]
        keys = ["warn", "fail"] + (["limit"] if old.limit is not None else [])
        if not isinstance(entry, dict) or set(entry) - set(keys) or not entry:
            raise InputError(f"--tolerances {path}: {name} needs {' and/or '.join(keys)} numbers")
        try:
            values = {k: None if (k == "fail" and v is None) else float(v) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise InputError(f"--tolerances {path}: {name}: {', '.join(keys)} must be numbers") from None
        tolerances[name] = replace(old, warn=values.get("warn", old.warn), fail=values.get("fail", old.fail),
                                   limit=values.get("limit", old.limit), file=path.name,
                                   tg132=tuple(t for t in old.tg132 if t not in values))
    return tolerances


# --- how the numbers are shown -------------------------------------------------------------

def format_number(value, significant: int = 3) -> str:
    """``value`` with ``significant`` significant digits, trailing zeros dropped (``0.002``,
    ``1.47``, ``113``); "n/a" for NaN or infinity, "–" for None."""
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v == 0.0:
        return "0"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(v))))
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def signed(value: float, digits: int = 1) -> str:
    """``+1.5`` or ``-0.3``, and ``0.0`` for anything that rounds to zero (never ``-0.0``)."""
    text = f"{value:+.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def limit_text(x: float) -> str:
    return format_number(x, 6)


def tolerance_text(row: dict) -> str:
    """A row's tolerance as the page and Slicer's table show it: "PASS ≤ 0, WARN ≤ 0.01, FAIL >
    0.01" (every boundary the verdict uses, at full precision)."""
    le, gt = ("≥", "<") if row["higher_is_better"] else ("≤", ">")
    warn, fail = limit_text(row["warn"]), row.get("fail")
    if fail is None:
        return f"PASS {le} {warn}, else WARN"
    if float(fail) == float(row["warn"]):
        return f"PASS {le} {warn}, FAIL {gt} {warn}"
    return f"PASS {le} {warn}, WARN {le} {limit_text(fail)}, FAIL {gt} {limit_text(fail)}"


def value_text(row: dict) -> str:
    """A row's value with enough significant digits (three at least) that the number shown,
    read against the tolerance shown, gives the verdict shown (0.002 % is WARN against PASS ≤ 0)."""
    value = row["value"]
    if value is None or not math.isfinite(float(value)):
        return format_number(value)
    tol = Tolerance(float(row["warn"]), None if row.get("fail") is None else float(row["fail"]),
                    bool(row["higher_is_better"]))
    for significant in range(3, 16):
        text = format_number(value, significant)
        if tol.verdict(float(text)) == tol.verdict(float(value)):
            return text
    return repr(float(value))


def share_text(share: dict) -> str:
    """"3 of 40 landmarks (7.5 %) > 2 mm"."""
    return (f"{share['count']} of {share['of']} {share['what']} ({format_number(share['percent'])} %) "
            f"{share['beyond']}")
