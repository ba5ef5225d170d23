"""Input checks: each bad input is one InputError naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.checks import check_network_size, check_overlap, check_pairs, check_volume
from ProgressiveRegistrationLib.core.errors import InputError


def _volume(arr, origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(np.asarray(arr))
    image.SetOrigin(origin)
    return image


def test_volumes():
    good = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    check_volume(_volume(good), "v")
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    for image, message in ((_volume(good[0]), "expected a 3D volume, got a 2D"), (_volume(nan), "NaN"),
                           (_volume(np.zeros((4, 5, 6))), "empty"), (_volume(good[:1]), "at least 2 voxels"),
                           (sitk.GetImageFromArray(np.stack([good] * 3, -1), isVector=True), "3 components")):
        with pytest.raises(InputError, match=message):
            check_volume(image, "v")


def test_pairs_overlap_and_sizes():
    check_pairs(np.zeros((3, 3)), np.ones((3, 3)))
    with pytest.raises(InputError, match="3 fixed but 2 moving"):
        check_pairs(np.zeros((3, 3)), np.zeros((2, 3)))
    a = _volume(np.random.default_rng(0).random((4, 4, 4)))
    check_overlap(a, _volume(np.ones((4, 4, 4)), (3.0, 0.0, 0.0)))  # voxel hulls [0, 3] and [3, 6] touch
    with pytest.raises(InputError, match="does not overlap"):
        check_overlap(a, _volume(np.ones((4, 4, 4)), (3.5, 0.0, 0.0)))
    check_network_size(48, 5)
    for size in (40, 0, -16):
        with pytest.raises(InputError, match="multiple of 16"):
            check_network_size(size, 5)
    check_network_size(36, 3)  # 3 levels: multiples of 4
