"""Ventilation: the local lung volume change between a breathing phase and the reference.

Both maps live on the grid of the registration's transform (the reference phase's grid,
subsampled), inside the reference lung mask (0 outside), and are dimensionless: ml of
volume change per ml of reference lung (docs/CONVENTIONS.md).

* Jacobian-based: ``v_J(x) = det(I + ∂d/∂x)(x) − 1``, with ``d`` the reference → phase
  field: positive where the phase's lung is larger than the reference's.
* HU-based (the density method): a voxel of air fraction ``a = −HU/1000`` holds the tissue
  fraction ``(1000 + HU)/1000``; if its tissue is conserved while its volume changes,
  ``V_phase/V_ref = (1000 + HU_ref)/(1000 + HU_phase)``, with ``HU_phase`` read where the
  registration puts the same tissue, ``φ(x)``. So ``v_HU(x) = (HU_ref(x) − HU_phase(φ(x))) /
  (1000 + HU_phase(φ(x)))``, HU clipped to [−995, 0]. Both images are smoothed first
  (Gaussian, ``sigma_mm``): the density method is limited by noise.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.grid import Grid
from ..core.warp import warp_moving

#: HU range of the density method: pure air would make the ratio infinite, denser than water is not lung.
HU_RANGE = (-995.0, 0.0)


def jacobian_ventilation(jacobian: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """``det J − 1`` where ``lungs`` (bool, same shape ``[k, j, i]``), 0 elsewhere; float32."""
    return np.where(lungs, jacobian - 1.0, 0.0).astype(np.float32)


def smoothed(image: sitk.Image, sigma_mm: float = 2.0) -> sitk.Image:
    """The image as float32, Gaussian-smoothed with ``sigma_mm`` (physical units)."""
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma_mm)


def on_grid(image: sitk.Image, grid: Grid) -> np.ndarray:
    """``image`` resampled linearly onto ``grid`` (-1000 HU outside): float32 ``[k, j, i]``."""
    return sitk.GetArrayFromImage(sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear,
                                                -1000.0, sitk.sitkFloat32))


def hu_ventilation(reference: sitk.Image, phase: sitk.Image, disp_image: sitk.Image, lungs: np.ndarray,
                   sigma_mm: float = 2.0, reference_hu: np.ndarray | None = None) -> np.ndarray:
    """``v_HU`` on the grid of ``disp_image`` (the reference → phase field, LPS mm) inside
    ``lungs`` (bool ``[k, j, i]`` on that grid), 0 elsewhere; float32. ``reference_hu``:
    ``on_grid(smoothed(reference, sigma_mm), grid)``, when the caller has it already."""
    grid = Grid.from_image(disp_image)
    if reference_hu is None:
        reference_hu = on_grid(smoothed(reference, sigma_mm), grid)
    # HU_phase(φ(x)) on the reference grid, then onto the transform's grid.
    warped = warp_moving(smoothed(phase, sigma_mm), Grid.from_image(reference), disp_image, -1000.0)
    hu_ref, hu_phase = (np.clip(a, *HU_RANGE) for a in (reference_hu, on_grid(warped, grid)))
    return np.where(lungs, (hu_ref - hu_phase) / (1000.0 + hu_phase), 0.0).astype(np.float32)


def lung_volume_change(jacobian: np.ndarray, lungs: np.ndarray, grid: Grid) -> dict:
    """The reference lung's volume and its volume in the phase (∫ det J over the reference
    lung), ml; ``change_percent`` relative to the reference."""
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    reference = float(lungs.sum()) * voxel_ml
    phase = float(jacobian[lungs].sum()) * voxel_ml
    return {"reference_ml": reference, "phase_ml": phase, "change_ml": phase - reference,
            "change_percent": 100.0 * (phase - reference) / reference if reference else float("nan")}
