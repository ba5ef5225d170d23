"""Lung field and body of a thorax CT (thresholds and connected components, no learning).

Used to crop each image around its lungs before the network, and for the masks of the
refinement's similarity, the folding statistic and the ventilation maps. The masks are made
on the image stored along the axes nearest to LPS (:func:`grid.stored_near_lps`), so that
"axial slice" means the same thing for every storage order, and the lung box is given in
LPS mm: a flipped or permuted copy of an image has the same masks and the same box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .grid import Grid, stored_near_lps


@dataclass
class ThoraxMasks:
    """Lung field and body of a CT on a coarse working grid (``shrink`` voxels per cell)."""

    lungs: sitk.Image
    body: sitk.Image
    shrink: tuple[int, int, int]


def thorax_masks(image: sitk.Image, air_hu: float = -400.0, min_fraction: float = 0.002,
                 outside_air_hu: float = -960.0, working_mm: float = 4.0) -> ThoraxMasks:
    """Lung field and body of a CT image in HU, on a ~``working_mm`` copy of the image.

    Body: the largest connected component brighter than ``air_hu``, holes filled slice by
    slice (lungs are enclosed in every axial slice of a full field of view, but open to
    the airway in 3D). Lungs: the air enclosed by the body, plus every air component whose
    median is denser than pure air (``outside_air_hu``): parenchyma sits around -850 HU,
    air outside the body at -1000, and crops that cut through the chest enclose nothing.
    Components smaller than ``min_fraction`` of the image are dropped (bowel gas, noise).
    """
    image = stored_near_lps(image)
    spacing = np.asarray(image.GetSpacing())
    shrink = tuple(max(1, int(round(working_mm / s))) for s in spacing)
    small = sitk.Cast(image, sitk.sitkFloat32)
    if max(shrink) > 1:
        small = sitk.BinShrink(small, shrink)
    air = sitk.BinaryThreshold(small, -1100.0, air_hu, 1, 0)
    body = sitk.BinaryThreshold(small, air_hu, 1e9, 1, 0)
    body = sitk.Equal(sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True), 1)
    filled = fill_holes_per_slice(body)
    min_voxels = max(1, int(min_fraction * np.prod(small.GetSize())))
    enclosed = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.And(filled, air)), minimumObjectSize=min_voxels)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(air), minimumObjectSize=min_voxels)
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(labels, small)
    keep = [lab for lab in stats.GetLabels() if stats.GetMedian(lab) > outside_air_hu]
    lungs_arr = np.isin(sitk.GetArrayViewFromImage(labels), keep) | (sitk.GetArrayViewFromImage(enclosed) > 0)
    lungs = sitk.GetImageFromArray(lungs_arr.astype(np.uint8))
    lungs.CopyInformation(small)
    body_arr = (sitk.GetArrayViewFromImage(filled) > 0) | lungs_arr
    body_img = sitk.GetImageFromArray(body_arr.astype(np.uint8))
    body_img.CopyInformation(small)
    return ThoraxMasks(lungs, body_img, shrink)


def fill_holes_per_slice(mask: sitk.Image) -> sitk.Image:
    """Fill the holes of every axial slice of a binary mask, in one 3D call.

    All-foreground slices interleaved between (and around) the real ones stop the
    background from connecting across slices, so a hole is background enclosed in its own
    slice — what a per-slice BinaryFillhole would find, without a Python loop.
    """
    arr = sitk.GetArrayViewFromImage(mask)
    stacked = np.ones((2 * arr.shape[0] + 1, *arr.shape[1:]), dtype=np.uint8)
    stacked[1::2] = arr
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(stacked), fullyConnected=False))
    out = sitk.GetImageFromArray(np.ascontiguousarray(filled[1::2]))
    out.CopyInformation(mask)
    return out


def lung_mask(image: sitk.Image, **kwargs) -> sitk.Image:
    """The lung field of :func:`thorax_masks` on ``image``'s own grid (uint8)."""
    lungs = thorax_masks(image, **kwargs).lungs
    return sitk.Resample(lungs, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def lung_bounds_lps(image: sitk.Image, margin_mm: float = 8.0, masks: ThoraxMasks | None = None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """LPS bounds (min, max; mm) of the lung field's voxels plus a margin, within the image's
    own extent; None without lungs.

    The margin is ``margin_mm`` rounded up to whole voxels of ``image`` along each LPS axis.
    """
    masks = masks or thorax_masks(image)
    lungs = sitk.GetArrayViewFromImage(masks.lungs)
    cells_kji = np.argwhere(lungs)
    if not len(cells_kji):
        return None
    coarse = Grid.from_image(masks.lungs)
    centres = coarse.points_to_lps(cells_kji[:, ::-1].astype(np.float64))
    half = coarse.half_voxel_lps()
    fine = Grid.from_image(image)
    voxel_lps = 2.0 * fine.half_voxel_lps()
    margin = np.ceil(margin_mm / voxel_lps - 1e-9) * voxel_lps
    lo_image, hi_image = fine.extent_lps()
    lo = np.maximum(centres.min(0) - half - margin, lo_image)
    hi = np.minimum(centres.max(0) + half + margin, hi_image)
    return lo, hi


def mask_on(mask: sitk.Image, grid: Grid) -> np.ndarray:
    """A binary mask of any grid resampled (nearest) onto ``grid``: bool array ``[k, j, i]``."""
    on = sitk.Resample(mask, grid.reference_image(sitk.sitkUInt8), sitk.Transform(), sitk.sitkNearestNeighbor,
                       0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on).astype(bool)
