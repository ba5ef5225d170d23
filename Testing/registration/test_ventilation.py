"""Ventilation maps and lung volume: the formulas of docs/CONVENTIONS.md on fields and images
whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image
from ProgressiveRegistrationLib.registration.ventilation import hu_ventilation, jacobian_ventilation, lung_volume_change

GRID = Grid((40, 36, 30), (2.0, 2.0, 2.5), (-40.0, -36.0, 0.0))


HALF_MM = np.array([25.0, 22.0, 25.0])


def _offsets(shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """|x − box centre| per axis (mm) at every voxel ``[k, j, i, 3]``, the box moved by ``shift_mm``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in GRID.size[::-1]], indexing="ij"), -1)[..., ::-1]
    x = GRID.points_to_lps(idx.reshape(-1, 3)).reshape(*GRID.shape_zyx, 3) - np.asarray(shift_mm)
    return np.abs(x - GRID.points_to_lps(np.array([[(n - 1) / 2 for n in GRID.size]]))[0])


def _image(fill_hu: float, inner_hu: float, shift_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """Soft tissue with a box of 'lung' of ``inner_hu`` in the middle, moved by ``shift_mm``."""
    inside = np.all(_offsets(shift_mm) < HALF_MM, axis=-1)
    return GRID.apply_to(sitk.GetImageFromArray(np.where(inside, inner_hu, fill_hu).astype(np.float32)))


def _core() -> np.ndarray:
    """Voxels at least 10 mm (5 σ of the smoothing) inside the box, and the 4 mm shift."""
    return np.all(_offsets() < HALF_MM - 14.0, axis=-1)


def test_jacobian_ventilation_and_lung_volume():
    lungs = np.zeros(GRID.shape_zyx, bool)
    lungs[5:15, 5:20, 5:25] = True
    jac = np.full(GRID.shape_zyx, 0.9)
    vent = jacobian_ventilation(jac, lungs)
    assert np.allclose(vent[lungs], -0.1) and not vent[~lungs].any()
    v = lung_volume_change(jac, lungs, GRID)
    voxel_ml = 2.0 * 2.0 * 2.5 / 1000
    assert v["reference_ml"] == pytest.approx(lungs.sum() * voxel_ml)
    assert v["phase_ml"] == pytest.approx(0.9 * lungs.sum() * voxel_ml)
    assert v["change_percent"] == pytest.approx(-10.0)


def test_density_method_gives_the_tissue_conserving_volume_ratio():
    # Inhale lung at -850 HU, the same tissue at -800 HU: V_phase / V_ref = 150 / 200.
    reference, phase = _image(40.0, -850.0), _image(40.0, -800.0)
    zero = displacement_image(np.zeros((*GRID.shape_zyx, 3), np.float32), GRID)
    core = _core()
    vent = hu_ventilation(reference, phase, zero, core)
    np.testing.assert_allclose(vent[core], (-850.0 + 800.0) / (1000.0 - 800.0), atol=1e-4)
    assert not vent[~core].any()


def test_density_method_reads_the_phase_where_the_field_points():
    # The phase is the reference moved by 4 mm along L; a field that says so sees no change.
    shift = (4.0, 0.0, 0.0)
    reference, phase = _image(40.0, -850.0), _image(40.0, -850.0, shift)
    moved = displacement_image(np.broadcast_to(np.float32(shift), (*GRID.shape_zyx, 3)).copy(), GRID)
    core = _core()
    assert np.abs(hu_ventilation(reference, phase, moved, core)[core]).max() < 1e-3
    zero = displacement_image(np.zeros((*GRID.shape_zyx, 3), np.float32), GRID)
    box = np.all(_offsets() < HALF_MM, axis=-1)
    # Read where the field does not point, the lung's edge meets soft tissue (unsmoothed: (−850 − 0) / 1000).
    assert hu_ventilation(reference, phase, zero, box)[box].min() < -0.5
