"""A simple breathing simulator: an exhale image from an inhale CT, with exact landmarks.

The motion family is deliberately unlike the training B-splines: superior–inferior motion
driven by the diaphragm (largest at the lung base, none at the apex), anterior–posterior
expansion of the anterior chest, and sliding: the superior–inferior motion is confined to
the lungs' in-plane footprint, so the chest wall and spine stay put while the lungs slide
along them (a shear, which does not fold).

The field ``w`` lives on the exhale (moving) image: ``exhale(y) = inhale(y + w(y))``, so a
moving landmark ``y`` corresponds to the fixed landmark ``x = y + w(y)`` exactly, and a
perfect registration maps ``x`` to ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core import fields
from ..core.grid import Grid
from ..core.lungs import lung_mask, mask_on, thorax_masks

#: Least depth (mm) inside the pleura of the landmarks :func:`simulate` picks.
LANDMARK_DEPTH_MM = 5.0


@dataclass
class BreathingPair:
    inhale: sitk.Image  # fixed
    exhale: sitk.Image  # moving
    fixed_points_lps: np.ndarray
    moving_points_lps: np.ndarray
    field_lps: np.ndarray  # w on the exhale grid, [k, j, i, 3] mm


def breathing_field_lps(image: sitk.Image, amplitude_si_mm: float, amplitude_ap_mm: float,
                        sliding_sigma_mm: float = 6.0) -> np.ndarray:
    """``w`` (LPS mm, ``[k, j, i, 3]``) on ``image``'s grid; identity direction assumed."""
    grid = Grid.from_image(image)
    nx, ny, nz = grid.size
    lungs = sitk.GetArrayFromImage(lung_mask(image)).astype(np.float32)
    if lungs.sum() == 0:  # no lungs: move the central 60 % of the body instead
        lungs[:, int(0.2 * ny):int(0.8 * ny), int(0.2 * nx):int(0.8 * nx)] = 1
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    footprint = sitk.GetImageFromArray(lungs.max(axis=0))  # 2D in-plane lung footprint
    footprint.SetSpacing(grid.spacing_mm[:2])
    footprint = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(footprint, sliding_sigma_mm))
    footprint = np.clip(footprint / max(footprint.max(), 1e-6), 0, 1)

    k = np.arange(nz, dtype=np.float64)
    # LPS z grows superiorly for identity direction: zn = 0 at the lung base, 1 at the apex.
    zn = np.clip((k - zs.min()) / max(zs.max() - zs.min(), 1), 0, 1)
    if grid.direction_matrix[2, 2] < 0:
        zn = 1 - zn
    base = (1 - zn) ** 1.5  # diaphragm-driven: strongest at the base
    j = np.arange(ny, dtype=np.float64)
    yn = j / max(ny - 1, 1)  # 0 anterior ... 1 posterior (LPS y grows posteriorly)
    w = np.zeros((nz, ny, nx, 3), dtype=np.float32)
    # Inhale position = exhale position moved inferiorly (−S) near the diaphragm.
    w[..., 2] = -amplitude_si_mm * base[:, None, None] * footprint[None]
    # Inhale: anterior chest moves anteriorly (−P), more at the base.
    w[..., 1] = -amplitude_ap_mm * ((1 - zn)[:, None, None] * (1 - yn)[None, :, None]) * np.ones((1, 1, nx))
    return w


def simulate(inhale: sitk.Image, seed: int = 0, amplitude_si_mm: float = 15.0, amplitude_ap_mm: float = 5.0,
             n_landmarks: int = 60, fixed_landmarks_lps: np.ndarray | None = None,
             min_depth_mm: float = LANDMARK_DEPTH_MM) -> BreathingPair:
    """Exhale image and landmark pairs (fixed = inhale, moving = exhale) from an inhale CT.

    Landmarks: given inhale points (e.g. the phantom's vessel bifurcations), their exhale
    partners solve ``y + w(y) = x`` (fixed-point iteration; w is a contraction); otherwise
    the exhale image's highest-gradient lung voxels at least ``min_depth_mm`` inside the
    pleura are picked (vessel walls, as DIR-Lab's landmarks are vessel and airway
    bifurcations inside the lungs; ``min_depth_mm=0`` lets the lung surface in, where the
    gradient is highest and most picks land).
    """
    rng = np.random.default_rng(seed)
    grid = Grid.from_image(inhale)
    w = breathing_field_lps(inhale, amplitude_si_mm, amplitude_ap_mm)
    vol = torch.from_numpy(sitk.GetArrayFromImage(inhale).astype(np.float32))
    step_inv = np.linalg.inv(grid.index_to_lps[:3, :3])
    w_vox = torch.from_numpy(np.einsum("ab,kjib->akji", step_inv, w).astype(np.float32))
    exhale_arr = fields.warp(vol, w_vox).numpy()
    dtype = sitk.GetArrayViewFromImage(inhale).dtype
    exhale = sitk.GetImageFromArray((np.round(exhale_arr) if dtype.kind in 'iu' else exhale_arr).astype(dtype))
    exhale.CopyInformation(inhale)

    w_t = torch.from_numpy(w).movedim(-1, 0).double()
    if fixed_landmarks_lps is not None:
        x = np.asarray(fixed_landmarks_lps, dtype=np.float64).reshape(-1, 3)
        y = x.copy()
        for _ in range(50):
            idx = grid.points_to_index(y)
            w_at = fields.sample(w_t, torch.from_numpy(idx.T.copy())).T.numpy()
            y_new = x - w_at
            if np.abs(y_new - y).max() < 1e-6:
                break
            y = y_new
        return BreathingPair(inhale, exhale, x, y, w)

    # Landmarks on high-gradient lung voxels of the exhale image away from its surface (vessels).
    masks = thorax_masks(exhale)
    lungs = mask_on(masks.lungs, grid)
    if min_depth_mm > 0:
        lungs &= masks.pleura_depth_mm(grid) >= min_depth_mm
    grad = fields.gaussian_gradient_magnitude(torch.from_numpy(exhale_arr), 1.0).numpy()
    cand = np.argwhere(lungs & (grad > np.percentile(grad[lungs], 90))) if lungs.any() else np.argwhere(grad > 0)
    rng.shuffle(cand)
    chosen: list[np.ndarray] = []
    min_mm = 8.0
    for c in cand:
        p = grid.points_to_lps(c[::-1][None].astype(np.float64))[0]
        if all(np.linalg.norm(p - q) >= min_mm for q in chosen):
            chosen.append(p)
        if len(chosen) == n_landmarks:
            break
    moving_pts = np.array(chosen)
    idx = grid.points_to_index(moving_pts)
    w_at = fields.sample(w_t, torch.from_numpy(idx.T.copy()).reshape(3, -1)).T.numpy()
    fixed_pts = moving_pts + w_at
    return BreathingPair(inhale, exhale, fixed_pts, moving_pts, w)
