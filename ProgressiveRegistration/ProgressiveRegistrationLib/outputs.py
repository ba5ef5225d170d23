"""The files of a registration result: transform, Jacobian, warped image, TRE table,
summary and overview figure, each as a writer for :func:`atomic.write_all`.

Formats: the transform is an ITK displacement field (LPS mm, resampling direction;
``transform.nrrd``/``.nii.gz``/``.h5``), ``jacobian.nrrd`` the determinant on the
transform's grid, ``tre.csv`` one row per landmark (LPS mm), ``summary.json`` the numbers.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .atomic import write_file, write_text
from .engine import Result
from .images import write_image
from .plots import overview_figure
from .transforms import write_transform

TRANSFORM_FORMATS = ("nrrd", "nii.gz", "h5")

TRE_COLUMNS = ["label", "fixed_l", "fixed_p", "fixed_s", "moving_l", "moving_p", "moving_s",
               "predicted_l", "predicted_p", "predicted_s", "tre_before_mm", "tre_network_mm", "tre_after_mm"]


def jacobian_image(result: Result) -> sitk.Image:
    """The Jacobian determinant as a float32 image on the transform's grid."""
    image = sitk.GetImageFromArray(result.jacobian.astype(np.float32))
    result.out_grid.apply_to(image)
    return image


def write_tre_csv(path, landmarks: dict, labels: list[str]) -> None:
    """``tre.csv``: per landmark its fixed, moving and predicted LPS positions (mm) and the TRE
    before, after the network alone and after refinement (mm)."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(TRE_COLUMNS)
            for i, label in enumerate(labels):
                w.writerow([label, *np.round(landmarks["fixed_lps"][i], 4), *np.round(landmarks["moving_lps"][i], 4),
                            *np.round(landmarks["predicted_lps"][i], 4), round(float(landmarks["before_mm"][i]), 4),
                            round(float(landmarks["network_mm"][i]), 4), round(float(landmarks["after_mm"][i]), 4)])

    write_file(path, write)


def read_tre_csv(path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(labels, TRE before, after the network alone, after refinement) of a ``tre.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ([r["label"] for r in rows], *(np.array([float(r[k]) for r in rows])
                                          for k in ("tre_before_mm", "tre_network_mm", "tre_after_mm")))


def registration_writers(result: Result, summary: dict, fixed: sitk.Image, moving: sitk.Image, labels: list[str],
                         fmt: str = "nrrd", warped: bool = True, overview: bool = True
                         ) -> dict[str, Callable[[Path], object]]:
    """Every output file of ``result`` by name; ``summary["files"]`` gets their list and
    ``summary.json`` (written last) the seconds spent writing."""
    t0 = time.perf_counter()
    writers: dict[str, Callable[[Path], object]] = {
        f"transform.{fmt}": lambda p: write_transform(result.displacement, p),
        "jacobian.nrrd": lambda p: write_image(jacobian_image(result), p),
    }
    if warped:
        writers["warped_moving.nrrd"] = lambda p: write_image(result.warped, p)
    if result.landmarks is not None:
        writers["tre.csv"] = lambda p: write_tre_csv(p, result.landmarks, labels)
    if overview:
        writers["overview.png"] = lambda p: overview_figure(fixed, moving, result, p)
    summary["files"] = sorted([*writers, "summary.json"])

    def write_summary(p):
        summary["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        write_text(p, json.dumps(summary, indent=2))

    writers["summary.json"] = write_summary
    return writers
