"""The files of a registration result: transform, Jacobian, warped image, TRE table,
summary and overview figure, each as a writer for :func:`atomic.write_all`.

Formats: the transform is an ITK displacement field (LPS mm, resampling direction;
``transform.nrrd``/``.nii.gz``/``.h5``), ``jacobian.nrrd`` the determinant on the
transform's grid, ``tre.csv`` one row per landmark (LPS mm), ``summary.json`` the numbers
(strict JSON: a number that is not finite, such as the TRE statistics of no landmark pair, is
``null``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..core.atomic import concurrent, write_csv, write_text
from ..core.grid import Grid
from ..core.itk_fields import write_transform
from ..core.metrics import worse_after_refinement
from ..io.images import write_image
from .engine import Result
from .figures import overview_figure, phases_figure
from .fourd import FourD

TRANSFORM_FORMATS = ("nrrd", "nii.gz", "h5")

TRE_COLUMNS = ["label", "fixed_l", "fixed_p", "fixed_s", "moving_l", "moving_p", "moving_s",
               "predicted_l", "predicted_p", "predicted_s", "tre_before_mm", "tre_network_mm", "tre_after_mm",
               "in_statistics", "worse_after_refinement"]


def grid_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    """A scalar ``[k, j, i]`` array as an image on ``grid`` (float arrays as float32)."""
    array = np.asarray(array)
    image = sitk.GetImageFromArray(array.astype(np.float32) if array.dtype.kind == "f" else array)
    return grid.apply_to(image)


def transform_writer(write: Callable[[Path], object], fmt: str) -> Callable[[Path], object]:
    """A transform's writer, run beside the others except as HDF5 (the HDF5 library takes
    one writer at a time)."""
    return write if fmt == "h5" else concurrent(write)


def jacobian_image(result: Result) -> sitk.Image:
    """The Jacobian determinant as a float32 image on the transform's grid."""
    return grid_image(result.jacobian, result.out_grid)


def write_tre_csv(path, landmarks: dict, labels: list[str]) -> None:
    """``tre.csv``: per landmark its fixed, moving and predicted LPS positions (mm) and the TRE
    before, after the network alone and after refinement (mm); ``in_statistics`` is 0 for a pair
    outside the images, which the summary leaves out; ``worse_after_refinement`` is 1 where the
    refinement moved the prediction away from the partner (:func:`metrics.worse_after_refinement`)."""
    rows = []
    used = landmarks.get("used", np.ones(len(labels), dtype=bool))
    worse = worse_after_refinement(landmarks["network_mm"], landmarks["after_mm"])
    for i, label in enumerate(labels):
        values = [*np.round(landmarks["fixed_lps"][i], 4), *np.round(landmarks["moving_lps"][i], 4),
                  *np.round(landmarks["predicted_lps"][i], 4),
                  *(round(float(landmarks[k][i]), 4) for k in ("before_mm", "network_mm", "after_mm")),
                  int(bool(used[i])), int(bool(worse[i]))]
        rows.append(dict(zip(TRE_COLUMNS, [label, *values])))
    write_csv(path, rows)


def read_tre_csv(path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(labels, TRE before, after the network alone, after refinement) of a ``tre.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ([r["label"] for r in rows], *(np.array([float(r[k]) for r in rows])
                                          for k in ("tre_before_mm", "tre_network_mm", "tre_after_mm")))


def registration_writers(result: Result, summary: dict, fixed: sitk.Image, moving: sitk.Image, labels: list[str],
                         fmt: str = "nrrd", warped: bool = True, overview: bool = True,
                         extra: dict[str, Callable[[Path], object]] | None = None
                         ) -> dict[str, Callable[[Path], object]]:
    """Every output file of ``result`` by name (and the caller's ``extra`` writers);
    ``summary["files"]`` gets their list and ``summary.json`` (written last) the seconds
    spent writing."""
    t0 = time.perf_counter()
    writers: dict[str, Callable[[Path], object]] = {
        f"transform.{fmt}": transform_writer(lambda p: write_transform(result.displacement, p), fmt),
        "jacobian.nrrd": concurrent(lambda p: write_image(jacobian_image(result), p)),
    }
    if warped:
        writers["warped_moving.nrrd"] = concurrent(lambda p: write_image(result.warped, p))
    if result.landmarks is not None:
        writers["tre.csv"] = lambda p: write_tre_csv(p, result.landmarks, labels)
    if overview:
        writers["overview.png"] = concurrent(lambda p: overview_figure(fixed, moving, result, p))
    return _with_summary({**writers, **(extra or {})}, summary, t0)


def json_safe(value):
    """``value`` as strict JSON can hold it: NaN and ±infinity become None (``null``), numpy
    numbers and arrays Python ones, tuples and sets lists, paths strings; keys strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data) -> str:
    """``data`` as strict JSON text (:func:`json_safe`; ``allow_nan=False`` guarantees no
    ``NaN``/``Infinity`` literal, which strict parsers refuse)."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False)


def _timed(name: str, write: Callable[[Path], object], seconds: dict) -> Callable[[Path], object]:
    """``write``, recording its seconds in ``seconds[name]`` (and run beside the others as ``write`` is)."""
    def run(path):
        t0 = time.perf_counter()
        write(path)
        seconds[name] = round(time.perf_counter() - t0, 3)

    run.concurrent = getattr(write, "concurrent", False)
    return run


def _with_summary(writers: dict, summary: dict, t0: float) -> dict:
    """``writers`` and, last, ``summary.json``: the summary gets the list of files, the seconds
    spent writing (since ``t0``, a ``time.perf_counter()``) and each file's own seconds
    (``seconds_per_file``; files written side by side overlap, so they add up to more)."""
    summary["files"] = sorted([*writers, "summary.json"])
    per_file: dict[str, float] = {}
    timed = {name: _timed(name, write, per_file) for name, write in writers.items()}

    def write_summary(p):
        summary["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        summary["seconds_per_file"] = dict(sorted(per_file.items(), key=lambda item: -item[1]))
        write_text(p, json_text(summary))

    return {**timed, "summary.json": write_summary}


def trajectory_rows(fourd: FourD, labels: list[str]) -> list[dict]:
    """``trajectories.csv``: per point and phase its LPS position (mm) and its distance from
    the reference position (mm)."""
    reference = fourd.phases[fourd.reference].points_lps
    rows = []
    for i, label in enumerate(labels):
        for phase in fourd.phases:
            p = phase.points_lps[i]
            rows.append({"label": label, "phase": phase.index, "name": phase.name, "l": round(float(p[0]), 4),
                         "p": round(float(p[1]), 4), "s": round(float(p[2]), 4),
                         "displacement_mm": round(float(np.linalg.norm(p - reference[i])), 4)})
    return rows


def fourd_writers(fourd: FourD, summary: dict, reference_image: sitk.Image, point_labels: list[str] | None = None,
                  fmt: str = "nrrd", extra: dict[str, Callable[[Path], object]] | None = None
                  ) -> dict[str, Callable[[Path], object]]:
    """Every output of a 4D registration by (relative) name: ``phase_<k>/`` with the phase's
    transform, Jacobian, ventilation maps, segmentation and summary; at the top
    ``phases.csv``, ``phases.png``, ``trajectories.csv`` (with points), ``summary.json``."""
    t0 = time.perf_counter()
    writers: dict[str, Callable[[Path], object]] = {}
    for ph in fourd.phases:
        folder = f"phase_{ph.index}"
        writers[f"{folder}/transform.{fmt}"] = transform_writer(lambda p, ph=ph: write_transform(ph.displacement, p), fmt)
        writers[f"{folder}/jacobian.nrrd"] = concurrent(lambda p, ph=ph: write_image(grid_image(ph.jacobian, fourd.grid), p))
        writers[f"{folder}/ventilation_jacobian.nrrd"] = \
            concurrent(lambda p, ph=ph: write_image(grid_image(ph.ventilation_jacobian, fourd.grid), p))
        writers[f"{folder}/ventilation_hu.nrrd"] = concurrent(
            lambda p, ph=ph: write_image(grid_image(ph.ventilation_hu, fourd.grid), p))
        if ph.labels is not None:
            writers[f"{folder}/segmentation.nrrd"] = concurrent(lambda p, ph=ph: write_image(ph.labels, p))
        phase_summary = {**ph.row(), "volume": ph.volume, "displacement_mm": ph.displacement_mm,
                         "inverse_consistency_mm": ph.inverse,
                         "stages_seconds": ph.result.seconds if ph.result is not None else {},
                         "warnings": ph.result.warnings if ph.result is not None else []}
        writers[f"{folder}/summary.json"] = lambda p, s=phase_summary: write_text(p, json_text(s))
    rows = [phase.row() for phase in fourd.phases]
    writers["phases.csv"] = lambda p: write_csv(p, rows)
    if point_labels is not None:
        writers["trajectories.csv"] = lambda p: write_csv(p, trajectory_rows(fourd, point_labels))
    writers["phases.png"] = lambda p: phases_figure(fourd, reference_image, p)
    summary["phases"] = rows
    return _with_summary({**writers, **(extra or {})}, summary, t0)
