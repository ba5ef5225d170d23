"""The warp stage against ITK's resampler through the same displacement field."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ProgressiveRegistrationLib.core import warp
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image


def _case(pixel_type, rng):
    """A rotated, anisotropic moving image and a differently rotated fixed grid with a rough
    field (3 mm SD) on it subsampled 3×2×1: many points leave the moving image."""
    moving = sitk.GetImageFromArray(rng.normal(0, 300, (20, 30, 25)).astype(np.float32))
    moving.SetSpacing((1.1, 0.9, 2.0))
    moving.SetOrigin((3.0, -4.0, 5.0))
    moving.SetDirection(sitk.VersorTransform((0.1, 0.2, 0.3), 0.3).GetMatrix())
    fixed = Grid((27, 22, 19), (1.0, 1.2, 1.7), (2.0, -3.0, 4.5), tuple(sitk.VersorTransform((0.3, 0.1, 0.2), 0.2).GetMatrix()))
    out = fixed.subsampled((3, 2, 1))
    disp = displacement_image(rng.normal(0, 3, (*out.shape_zyx, 3)).astype(np.float32), out)
    return sitk.Cast(moving, pixel_type), fixed, disp


def _itk(moving, fixed, disp):
    tx = sitk.DisplacementFieldTransform(sitk.Cast(disp, sitk.sitkVectorFloat64))
    return sitk.Resample(moving, fixed.reference_image(moving.GetPixelID()), tx, sitk.sitkLinear, -1024.0,
                         moving.GetPixelID())


@pytest.mark.skipif(warp.numba is None, reason="numba not installed: warp_moving is ITK's resampler itself")
@pytest.mark.parametrize("pixel_type", [sitk.sitkFloat32, sitk.sitkInt16])
def test_compiled_warp_equals_itk(pixel_type):
    moving, fixed, disp = _case(pixel_type, np.random.default_rng(0))
    ours, ref = warp.warp_moving(moving, fixed, disp), _itk(moving, fixed, disp)
    assert ours.GetPixelID() == pixel_type
    assert ours.GetSize() == ref.GetSize() and np.allclose(ours.GetOrigin(), ref.GetOrigin())
    assert np.allclose(ours.GetDirection(), ref.GetDirection()) and np.allclose(ours.GetSpacing(), ref.GetSpacing())
    a = sitk.GetArrayFromImage(ours).astype(np.float64)
    b = sitk.GetArrayFromImage(ref).astype(np.float64)
    outside = b == -1024.0
    assert 0.05 < outside.mean() < 0.5  # the border rules are exercised
    np.testing.assert_array_equal(a == -1024.0, outside)
    if pixel_type == sitk.sitkFloat32:
        np.testing.assert_allclose(a, b, atol=1e-3)
    else:  # truncation at .0 boundaries may flip by one for a rare voxel
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


def test_field_on_another_grid_falls_back_to_itk():
    moving, fixed, disp = _case(sitk.sitkFloat32, np.random.default_rng(1))
    disp.SetOrigin(tuple(np.asarray(disp.GetOrigin()) + 0.5))  # no longer a subsampled copy of the fixed grid
    assert warp._subsampling(fixed, disp) is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(warp.warp_moving(moving, fixed, disp)),
                                  sitk.GetArrayFromImage(_itk(moving, fixed, disp)))


def test_numba_switch_selects_every_reference_path():
    """PROGREG_NUMBA=0 turns off every compiled kernel (transform, Jacobian, warp) at import."""
    import os
    import sys

    from conftest import MODULE_DIR, run_process

    code = ("from ProgressiveRegistrationLib.core import fields, transforms, warp\n"
            "print([m.numba is None for m in (fields, transforms, warp)])")
    for value, expected in (("0", "[True, True, True]"), ("1", "[False, False, False]")):
        r = run_process([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True,
                           env={**os.environ, "PROGREG_NUMBA": value})
        assert r.returncode == 0 and r.stdout.strip() == expected, (value, r.stdout, r.stderr)
