"""Lung field and body masks of thorax CT."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.grid import Grid, crop_grid
from ProgressiveRegistrationLib.core.lungs import lung_box


def test_lung_crop_of_real_ct(chest_ct):
    image = sitk.ReadImage(str(chest_ct))
    box = lung_box(image)
    assert box is not None
    assert all(s > 10 for s in box.size)
    assert all(0 <= a and a + s <= n for a, s, n in zip(box.start, box.size, image.GetSize()))
    crop = crop_grid(Grid.from_image(image), box, 32)
    lo, hi = crop.bounding_box_lps()
    ilo, ihi = Grid.from_image(image).bounding_box_lps()
    assert np.all(lo >= ilo - 1e-3) and np.all(hi <= ihi + 1e-3)


def test_fill_holes_per_slice_matches_slice_loop():
    from ProgressiveRegistrationLib.core.lungs import fill_holes_per_slice

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.random((12, 30, 35)) > 0.35).astype(np.uint8))
    image.SetSpacing((1.0, 2.0, 3.0))
    reference = sitk.JoinSeries([sitk.BinaryFillhole(image[:, :, z]) for z in range(image.GetSize()[2])])
    ours = fill_holes_per_slice(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
    assert ours.GetSpacing() == image.GetSpacing()
