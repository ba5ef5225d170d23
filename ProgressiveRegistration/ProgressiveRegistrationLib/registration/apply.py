"""Applying a registration's transform to other data: images, label maps and points.

A transform of this project (or any ITK transform) maps a point ``x`` of the fixed image's
space to the point ``T(x)`` of the moving image's space: the resampling direction
(docs/CONVENTIONS.md). Applying it carries data **from the moving image's space into the
fixed image's**:

* an image or label map of the moving image's space is resampled onto a reference grid of the
  fixed image's space, ``out(x) = input(T(x))``;
* points of the moving image go through the inverse: the ``x`` with ``T(x) = y`` (the
  transform's own inverse where it is linear, else a fixed-point iteration per point).

Images and points are LPS mm, as SimpleITK reads them.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError

#: Interpolation of images by name (label maps: nearest, or per label: :func:`resample_label_map`).
INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def _check_overlap(image: sitk.Image, transform: sitk.Transform, reference: sitk.Image, what: str) -> None:
    """InputError unless some voxel of ``reference`` maps into ``image`` through ``transform``."""
    inside = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(image)
    hit = sitk.Resample(inside, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(hit).any():
        raise InputError(f"{what} does not overlap the reference image through the transform: nothing of it "
                         "would land on the reference grid (another patient's or another scan's image?)")


def resample_image(image: sitk.Image, transform: sitk.Transform, reference: sitk.Image, interpolation: str = "linear",
                   default_value: float = -1024.0, what: str = "the image") -> sitk.Image:
    """``image`` (moving image's space) on ``reference``'s grid through ``transform``, with
    ``default_value`` where ``T(x)`` falls outside it (−1024 HU, air, for CT); the pixel type of
    ``image`` is kept (B-spline overshoot clamped to its range)."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    _check_overlap(image, transform, reference, what)
    return sitk.Resample(image, reference, transform, INTERPOLATIONS[interpolation], default_value, image.GetPixelID())


def resample_label_map(labels: sitk.Image, transform: sitk.Transform, reference: sitk.Image, smooth: bool = False,
                       what: str = "the label map") -> sitk.Image:
    """A label map (moving image's space) on ``reference``'s grid, 0 outside. Nearest neighbour,
    or with ``smooth`` each label's indicator interpolated linearly and, per voxel, the most
    likely of the labels and the background (one minus their sum) kept: boundaries follow the
    field between voxels, and a structure a voxel thin is not lost to the nearest neighbour's
    choice. The pixel type is kept."""
    _check_overlap(labels, transform, reference, what)
    if not smooth:
        return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0]
    best = np.zeros(sitk.GetArrayViewFromImage(reference).shape[:3], dtype=np.float32)
    out = np.zeros(best.shape, dtype=sitk.GetArrayViewFromImage(labels).dtype)
    total = np.zeros(best.shape, dtype=np.float32)
    for value in values:
        share = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(labels == value, sitk.sitkFloat32), reference, transform,
                                                     sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        total += share
        better = share > best
        best[better], out[better] = share[better], value
    out[(1.0 - total) > best] = 0  # the background is the likeliest there
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def points_to_fixed(transform: sitk.Transform, points_moving_lps: np.ndarray, tolerance_mm: float = 1e-4,
                    iterations: int = 200, labels: list[str] | None = None) -> np.ndarray:
    """The fixed-space points ``x`` with ``T(x) = y`` for ``(n, 3)`` moving-space points ``y``
    (LPS mm). A linear transform is inverted exactly; any other by the fixed-point iteration
    ``x ← x + (y − T(x))`` (it converges where the field is fold-free, ``|∂d| < 1``). A point
    that does not converge within ``tolerance_mm`` is InputError (the transform is not
    invertible there), naming it."""
    points = np.asarray(points_moving_lps, dtype=np.float64).reshape(-1, 3)
    if transform.IsLinear():
        try:
            inverse = transform.GetInverse()
        except RuntimeError:
            raise InputError("the transform is not invertible (a singular matrix)") from None
        return np.array([inverse.TransformPoint(p.tolist()) for p in points]).reshape(-1, 3)
    out = np.empty_like(points)
    for k, y in enumerate(points):
        x = y.copy()
        for _ in range(iterations):
            step = y - np.asarray(transform.TransformPoint(x.tolist()))
            x += step
            if np.abs(step).max() < tolerance_mm:
                break
        if np.linalg.norm(np.asarray(transform.TransformPoint(x.tolist())) - y) > 10 * tolerance_mm:
            name = labels[k] if labels and k < len(labels) else str(k + 1)
            raise InputError(f"point {name}: the transform is not invertible there (it folds, or maps nothing "
                             "onto this point); the point cannot be carried to the fixed image")
        out[k] = x
    return out
