"""Lung field and body masks of thorax CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.grid import Grid, box_grid_lps
from ProgressiveRegistrationLib.core.lungs import lung_bounds_lps, thorax_masks


def test_lung_crop_of_real_ct(chest_ct):
    image = sitk.ReadImage(str(chest_ct))
    bounds = lung_bounds_lps(image)
    assert bounds is not None
    lo, hi = bounds
    ilo, ihi = Grid.from_image(image).extent_lps()
    assert np.all(hi - lo > 10 * np.asarray(image.GetSpacing()))
    assert np.all(lo >= ilo - 1e-6) and np.all(hi <= ihi + 1e-6)
    crop = box_grid_lps(lo, hi, 32)
    np.testing.assert_allclose(crop.extent_lps(), (lo, hi), atol=1e-9)


def test_the_lung_bounds_are_the_voxel_hull_plus_whole_voxels_of_margin():
    """An axis-aligned image: the bounds are the lung cells' hull widened by ceil(margin / spacing) voxels."""
    from conftest import SAMPLE

    image = sitk.ReadImage(str(SAMPLE))
    masks = thorax_masks(image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(masks.lungs)
    bb = np.asarray(stats.GetBoundingBox(1))
    f, spacing = np.asarray(masks.shrink), np.asarray(image.GetSpacing())
    margin = np.ceil(8.0 / spacing)
    start = np.clip(bb[:3] * f - margin, 0, None)
    stop = np.minimum(bb[:3] * f + bb[3:] * f + margin, image.GetSize())
    grid = Grid.from_image(image)
    lo, hi = lung_bounds_lps(image, 8.0, masks)
    np.testing.assert_allclose(lo, grid.points_to_lps((start - 0.5)[None])[0], atol=1e-9)
    np.testing.assert_allclose(hi, grid.points_to_lps((stop - 0.5)[None])[0], atol=1e-9)


def test_fill_holes_per_slice_matches_slice_loop():
    from ProgressiveRegistrationLib.core.lungs import fill_holes_per_slice

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.random((12, 30, 35)) > 0.35).astype(np.uint8))
    image.SetSpacing((1.0, 2.0, 3.0))
    reference = sitk.JoinSeries([sitk.BinaryFillhole(image[:, :, z]) for z in range(image.GetSize()[2])])
    ours = fill_holes_per_slice(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
    assert ours.GetSpacing() == image.GetSpacing()


@pytest.mark.parametrize("angle", [0.0, 0.4])
def test_cells_bounds_are_those_of_every_cell(angle):
    """The LPS bounds of a mask's cells, taken from each row's first and last cell, equal the
    bounds of every cell mapped (a random mask, an axis-aligned and an oblique, flipped grid)."""
    from ProgressiveRegistrationLib.core.lungs import cells_bounds_lps

    c, s = np.cos(angle), np.sin(angle)
    grid = Grid((13, 11, 9), (1.5, 2.0, 3.0), (10.0, -20.0, 5.0), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    cells = np.random.default_rng(3).random(grid.shape_zyx) > 0.9
    centres = grid.points_to_lps(np.argwhere(cells)[:, ::-1].astype(np.float64))
    half = grid.half_voxel_lps()
    lo, hi = cells_bounds_lps(grid, cells)
    np.testing.assert_allclose(lo, centres.min(0) - half, atol=1e-9)
    np.testing.assert_allclose(hi, centres.max(0) + half, atol=1e-9)
    assert cells_bounds_lps(grid, np.zeros(grid.shape_zyx, bool)) is None
