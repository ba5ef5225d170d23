"""Figures: the overview's slices are the slices of a full resample."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import SAMPLE


def test_overview_slice_equals_the_slice_of_a_full_resample():
    """The overview figure resamples only the slice it shows; it must be that slice of the
    whole-volume resample (rotated, anisotropic target grid)."""
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.registration.figures import _coronal_on

    image = sitk.ReadImage(str(SAMPLE))
    c, s = np.cos(0.3), np.sin(0.3)
    grid = Grid((40, 30, 20), (3.0, 2.5, 4.0), tuple(np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [10.0, 12.0, 3.0]))), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    full = sitk.GetArrayFromImage(sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear,
                                                -1024.0, sitk.sitkFloat32))
    for j in (0, 17, 29):
        np.testing.assert_allclose(_coronal_on(image, grid, j), full[:, j, :], atol=1e-3)
