"""Grids: voxel index ↔ LPS as SimpleITK computes it, crop grids that tile their box, and
subsampled grids that cover the image."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import rotation

from ProgressiveRegistrationLib.core.grid import Box, Grid, crop_grid, resample, whole_box


def _image() -> sitk.Image:
    image = sitk.Image(30, 24, 18, sitk.sitkFloat32)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-100.0, 40.0, 12.5))
    image.SetDirection(rotation(0.2, -0.1, 0.3).ravel().tolist())
    return image


def test_index_and_lps_agree_with_simpleitk():
    image = _image()
    grid = Grid.from_image(image)
    ijk = np.array([[0.0, 0.0, 0.0], [3.5, 7.25, 2.0], [29.0, 23.0, 17.0]])
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk])
    np.testing.assert_allclose(grid.points_to_lps(ijk), expected, atol=1e-9)
    np.testing.assert_allclose(grid.points_to_index(expected), ijk, atol=1e-9)
    assert grid.shape_zyx == sitk.GetArrayViewFromImage(image).shape
    back = grid.reference_image()
    assert Grid.from_image(back) == grid


def test_crop_grid_tiles_its_box():
    grid = Grid.from_image(_image())
    box = Box((4, 2, 1), (20, 16, 12))
    crop = crop_grid(grid, box, 8)
    # The first and last crop voxels' outer faces are the box's outer faces.
    first_face = crop.points_to_lps(np.array([[-0.5, -0.5, -0.5]]))
    last_face = crop.points_to_lps(np.array([[7.5, 7.5, 7.5]]))
    np.testing.assert_allclose(first_face, grid.points_to_lps(np.array(box.start, float)[None] - 0.5), atol=1e-9)
    np.testing.assert_allclose(last_face, grid.points_to_lps(np.array(box.start, float)[None] + np.array(box.size) - 0.5),
                               atol=1e-9)
    assert crop.direction == grid.direction
    assert Box((-3, 0, 10), (50, 5, 20)).clipped_to((30, 24, 18)) == Box((0, 0, 10), (30, 5, 8))
    assert whole_box(_image()) == Box((0, 0, 0), (30, 24, 18))


def test_subsampled_grid_reaches_the_last_voxel():
    grid = Grid.from_image(_image())
    for stride in ((1, 1, 1), (3, 2, 4), (7, 5, 17)):
        sub = grid.subsampled(stride)
        last = (np.array(sub.size) - 1) * stride
        assert np.all(last >= np.array(grid.size) - 1) and np.all(last - stride < np.array(grid.size) - 1)
        np.testing.assert_allclose(sub.points_to_lps(np.ones((1, 3))), grid.points_to_lps(np.array([stride], float)))


def test_resample_is_identity_on_the_same_grid():
    image = _image()
    arr = np.random.default_rng(0).random(sitk.GetArrayViewFromImage(image).shape).astype(np.float32)
    src = sitk.GetImageFromArray(arr)
    src.CopyInformation(image)
    np.testing.assert_allclose(sitk.GetArrayFromImage(resample(src, Grid.from_image(image))), arr, atol=1e-6)
