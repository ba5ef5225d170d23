"""Lung field, body and field of view of a thorax CT (thresholds and connected components,
no learning).

Used to crop the images around the lungs before the network (:mod:`registration.geometry`
makes the two crops correspond), and for the masks of the refinement's similarity, the
folding statistic and the ventilation maps. The masks are made
on the image stored along the axes nearest to LPS (:func:`grid.stored_near_lps`), so that
"axial slice" means the same thing for every storage order, and the lung box is given in
LPS mm: a flipped or permuted copy of an image has the same masks and the same box.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .grid import Grid, stored_near_lps

#: Values at or below this (HU) that reach the image's border are padding, not anatomy: a
#: resample's fill (-1024), the scanner's outside value (-2048, -3024) and air clamped by the
#: scanner around the body. Air inside the body is never that uniform over a whole cell.
PADDING_HU = -1024.0


@dataclass
class ThoraxMasks:
    """Lung field, body and field of view of a CT on a coarse working grid (``shrink``
    voxels per cell, stored along the axes nearest to LPS); uint8 images, 1 inside.

    ``fov``: the cells that hold measured data: neither padding (cells at or below
    :data:`PADDING_HU` connected to the image's border) nor outside the image.
    ``given``: the user's mask on the image's own grid (uint8), when one replaces the computed
    lung field (:func:`with_given_lungs`); ``lungs`` is then its copy on the working grid.
    """

    lungs: sitk.Image
    body: sitk.Image
    shrink: tuple[int, int, int]
    fov: sitk.Image
    given: sitk.Image | None = None

    def lungs_on(self, grid: Grid) -> np.ndarray:
        """The lung field on ``grid`` (bool ``[k, j, i]``): the user's mask where one was
        given (at its own resolution), else the computed one."""
        return mask_on(self.given if self.given is not None else self.lungs, grid)

    @functools.cached_property
    def pleura(self) -> sitk.Image:
        """The space inside the pleura on the working grid (uint8): the lung field with its
        vessels and airways filled in (closed by one working cell, holes filled), so that its
        surface is the lungs' outer surface, along which they slide, and not every vessel's wall."""
        closed = sitk.BinaryMorphologicalClosing(self.lungs, [1, 1, 1], sitk.sitkBall)
        return sitk.BinaryFillhole(sitk.Or(closed, self.lungs))

    def pleura_on(self, grid: Grid) -> np.ndarray:
        """:attr:`pleura` on ``grid`` (bool ``[k, j, i]``)."""
        return mask_on(self.pleura, grid)

    def pleura_depth_mm(self, grid: Grid) -> np.ndarray:
        """Each voxel's distance (mm) inside the pleura on ``grid`` (``[k, j, i]`` float32;
        negative outside): SimpleITK's signed Maurer distance of :meth:`pleura_on`."""
        pleura = grid.apply_to(sitk.GetImageFromArray(self.pleura_on(grid).astype(np.uint8)))
        return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(pleura, insideIsPositive=True,
                                                                   squaredDistance=False, useImageSpacing=True))

    def lungs_dilated(self, margin_mm: float) -> sitk.Image:
        """The lung field on the working grid grown by ``margin_mm`` (rounded to whole cells)."""
        radius = [max(1, int(round(margin_mm / s))) for s in self.lungs.GetSpacing()]
        return sitk.BinaryDilate(self.lungs, radius, sitk.sitkBall)


def thorax_masks(image: sitk.Image, air_hu: float = -400.0, min_fraction: float = 0.002,
                 outside_air_hu: float = -960.0, working_mm: float = 4.0, min_core: float = 0.25) -> ThoraxMasks:
    """Lung field and body of a CT image in HU, on a ~``working_mm`` copy of the image.

    Body: the largest connected component brighter than ``air_hu``, holes filled slice by
    slice (lungs are enclosed in every axial slice of a full field of view, but open to
    the airway in 3D). Lungs: the air enclosed by the body, plus every air component whose
    median is denser than pure air (``outside_air_hu``): parenchyma sits around -850 HU,
    air outside the body at -1000, and crops that cut through the chest enclose nothing.
    Components smaller than ``min_fraction`` of the image are dropped (bowel gas, noise).
    Padding (:func:`field_of_view`) is neither air nor body; what it leaves of the air outside
    the body can be a thin sheet as dense as parenchyma (partial volume at the skin), so a
    component must also be bulky to count as lung: at least ``min_core`` of its cells survive
    an erosion by one cell (lungs: ~0.7 at 4 mm; a sheet: almost none).
    """
    image = stored_near_lps(image)
    spacing = np.asarray(image.GetSpacing())
    shrink = tuple(max(1, int(round(working_mm / s))) for s in spacing)
    small = sitk.Cast(image, sitk.sitkFloat32)
    if max(shrink) > 1:
        small = sitk.BinShrink(small, shrink)
    fov = field_of_view(small)
    # Padding is not air: lung air that touches a field of view's edge stays a component of
    # its own (a resample's -1024 fill would otherwise join it to the outside).
    air = sitk.And(sitk.BinaryThreshold(small, -1100.0, air_hu, 1, 0), fov)
    body = sitk.BinaryThreshold(small, air_hu, 1e9, 1, 0)
    body = sitk.Equal(sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True), 1)
    filled = fill_holes_per_slice(body)
    min_voxels = max(1, int(min_fraction * np.prod(small.GetSize())))
    enclosed = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.And(filled, air)), minimumObjectSize=min_voxels)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(air), minimumObjectSize=min_voxels)
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(labels, small)
    labels_arr = sitk.GetArrayViewFromImage(labels)
    eroded = sitk.BinaryErode(air, [1, 1, 1], sitk.sitkBall)  # kept: a view does not keep its image alive
    core = sitk.GetArrayViewFromImage(eroded) > 0
    cells = np.bincount(labels_arr.ravel())
    core_cells = np.bincount(labels_arr[core], minlength=len(cells))
    keep = [lab for lab in stats.GetLabels()
            if stats.GetMedian(lab) > outside_air_hu and core_cells[lab] >= min_core * cells[lab]]
    lungs_arr = np.isin(labels_arr, keep) | (sitk.GetArrayViewFromImage(enclosed) > 0)
    lungs = sitk.GetImageFromArray(lungs_arr.astype(np.uint8))
    lungs.CopyInformation(small)
    body_arr = (sitk.GetArrayViewFromImage(filled) > 0) | lungs_arr
    body_img = sitk.GetImageFromArray(body_arr.astype(np.uint8))
    body_img.CopyInformation(small)
    return ThoraxMasks(lungs, body_img, shrink, fov)


def with_given_lungs(masks: ThoraxMasks, given: sitk.Image) -> ThoraxMasks:
    """``masks`` with the lung field replaced by a user's mask (uint8 on the image's grid, from
    :func:`checks.given_mask`): the crops, the refinement's similarity and the quality checks'
    region then follow the user's mask. The body is the computed body joined with the mask.
    On the working grid a cell counts as inside when at least half of it is (linear
    interpolation of the mask), or, for a mask thinner than a cell, where the mask has any voxel."""
    reference = masks.lungs
    coarse = sitk.Resample(sitk.Cast(given, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    lungs = sitk.GetArrayViewFromImage(coarse) >= 0.5
    if not lungs.any():
        lungs = sitk.GetArrayViewFromImage(coarse) > 0
    lungs_img = sitk.GetImageFromArray(lungs.astype(np.uint8))
    lungs_img.CopyInformation(reference)
    body = sitk.GetImageFromArray(((sitk.GetArrayViewFromImage(masks.body) > 0) | lungs).astype(np.uint8))
    body.CopyInformation(reference)
    return ThoraxMasks(lungs_img, body, masks.shrink, masks.fov, given)


def field_of_view(small: sitk.Image, padding_hu: float = PADDING_HU) -> sitk.Image:
    """The cells of a (box-averaged) CT that hold measured data (uint8, 1 inside): all but the
    solid regions of cells at or below ``padding_hu`` that touch the image's border.

    Padding is solid: a cell averaged over padding alone keeps the padding value exactly, and
    a region of them survives an opening by one cell. Air that the scanner clamps to -1024 is
    speckled with noise above it and does not: it stays air (measured, outside the body).
    A cell that mixes padding and tissue is brighter than the padding and counts as measured.
    """
    padding = sitk.BinaryThreshold(small, -1e30, padding_hu + 0.5, 1, 0)
    padding = sitk.BinaryMorphologicalOpening(padding, [1, 1, 1], sitk.sitkBall)
    labels = sitk.ConnectedComponent(padding)
    arr = sitk.GetArrayViewFromImage(labels)
    faces = np.concatenate([arr[0].ravel(), arr[-1].ravel(), arr[:, 0].ravel(), arr[:, -1].ravel(),
                            arr[:, :, 0].ravel(), arr[:, :, -1].ravel()])
    border = np.unique(faces[faces > 0])
    fov = sitk.GetImageFromArray((~np.isin(arr, border)).astype(np.uint8))
    fov.CopyInformation(small)
    return fov


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


def lung_bounds_lps(image: sitk.Image, margin_mm: float = 8.0, masks: ThoraxMasks | None = None,
                    seen_by: ThoraxMasks | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """LPS bounds (min, max; mm) of the lung field's voxels plus a margin, within the LPS
    bounds of the image's field of view (its measured data); None without lungs.

    ``seen_by``: another image's masks; then only the lungs inside its field of view count,
    and the bounds stay within the LPS bounds of that field of view, so that two images whose
    fields of view cut the lungs differently get crops of the same anatomy. The margin is
    ``margin_mm`` rounded up to whole voxels of ``image`` along each LPS axis.
    """
    masks = masks or thorax_masks(image)
    coarse = Grid.from_image(masks.lungs)
    lungs = sitk.GetArrayViewFromImage(masks.lungs) > 0
    if seen_by is not None:
        lungs = lungs & mask_on(seen_by.fov, coarse)
    bounds = cells_bounds_lps(coarse, lungs)
    if bounds is None:
        return None
    fine = Grid.from_image(image)
    voxel_lps = 2.0 * fine.half_voxel_lps()
    margin = np.ceil(margin_mm / voxel_lps - 1e-9) * voxel_lps
    lo_image, hi_image = fine.extent_lps()
    # Within the measured data (an oblique copy's padded corners hold none), of both images.
    for fov in (masks.fov,) if seen_by is None else (masks.fov, seen_by.fov):
        lo_seen, hi_seen = mask_bounds_lps(fov)
        lo_image, hi_image = np.maximum(lo_image, lo_seen), np.minimum(hi_image, hi_seen)
    lo = np.maximum(bounds[0] - margin, lo_image)
    hi = np.minimum(bounds[1] + margin, hi_image)
    return lo, hi


def cells_bounds_lps(grid: Grid, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """LPS bounds (min, max; mm) of the cells of ``grid`` where ``cells`` (bool ``[k, j, i]``)
    holds: their extents, not their centres; None for no cell."""
    # An LPS coordinate is affine in (i, j, k): over the cells of one row (k, j) it is least and
    # greatest at the row's first and last cell, so those two per row are all that is mapped.
    rows = cells.any(axis=2)
    if not rows.any():
        return None
    k, j = np.nonzero(rows)
    first = np.argmax(cells, axis=2)[k, j]
    last = cells.shape[2] - 1 - np.argmax(cells[:, :, ::-1], axis=2)[k, j]
    ends_ijk = np.concatenate([np.stack([first, j, k], 1), np.stack([last, j, k], 1)]).astype(np.float64)
    centres = grid.points_to_lps(ends_ijk)
    half = grid.half_voxel_lps()
    return centres.min(0) - half, centres.max(0) + half


def mask_bounds_lps(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounds (min, max; mm) of a mask's cells; the whole grid's extent for an empty mask."""
    grid = Grid.from_image(mask)
    return cells_bounds_lps(grid, sitk.GetArrayViewFromImage(mask) > 0) or grid.extent_lps()


def mask_on(mask: sitk.Image, grid: Grid) -> np.ndarray:
    """A binary mask of any grid resampled (nearest) onto ``grid``: bool array ``[k, j, i]``."""
    on = sitk.Resample(mask, grid.reference_image(sitk.sitkUInt8), sitk.Transform(), sitk.sitkNearestNeighbor,
                       0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on).astype(bool)
