"""The breathing simulator: exhale images and landmark partners from an exact, known field."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image
from ProgressiveRegistrationLib.simulation import phantom
from ProgressiveRegistrationLib.simulation.breathing import simulate


def test_breathing_ground_truth_is_exact():
    p = phantom.generate(4, size=(96, 80, 64), spacing_mm=(3.2, 3.2, 5.0))
    pair = simulate(p.image, amplitude_si_mm=20, amplitude_ap_mm=6, fixed_landmarks_lps=p.bifurcations_lps)
    grid = Grid.from_image(pair.exhale)
    # Landmarks: y + w(y) = x.
    w = torch.from_numpy(pair.field_lps).movedim(-1, 0).double()
    w_at = fields.sample(w, torch.from_numpy(grid.points_to_index(pair.moving_points_lps).T.copy())).T.numpy()
    np.testing.assert_allclose(pair.moving_points_lps + w_at, pair.fixed_points_lps, atol=1e-4)
    # Dense: exhale(y) = inhale(y + w(y)), checked with SimpleITK's resampler.
    tx = sitk.DisplacementFieldTransform(displacement_image(pair.field_lps, grid))
    ref = sitk.Resample(sitk.Cast(pair.inhale, sitk.sitkFloat32), pair.exhale, tx, sitk.sitkLinear, -1000.0)
    diff = np.abs(sitk.GetArrayFromImage(ref) - sitk.GetArrayFromImage(pair.exhale))
    # Where y + w(y) leaves the image the two pad differently (border value / -1000): compare inside.
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).reshape(-1, 3)
    src = grid.points_to_index(grid.points_to_lps(idx) + pair.field_lps.transpose(2, 1, 0, 3).reshape(-1, 3))
    inside = np.all((src >= 0) & (src <= np.asarray(grid.size) - 1), 1).reshape(grid.size).transpose(2, 1, 0)
    assert inside.mean() > 0.8
    assert diff[inside].max() < 1.0, diff[inside].max()
    # Diaphragm motion: the largest displacement is superior–inferior, up to the amplitude.
    assert 10 < np.abs(pair.field_lps[..., 2]).max() <= 20.0 + 1e-6
    assert np.abs(pair.field_lps[..., 0]).max() == 0
    # Sliding is a shear: the motion never folds.
    det = fields.jacobian_determinant(w, grid.index_to_lps[:3, :3])
    assert float(det.min()) > 0


def test_picked_landmarks_lie_inside_the_lungs_not_on_their_surface():
    """The simulator's own picks are vessel voxels at least ``LANDMARK_DEPTH_MM`` inside the
    pleura (depth from scipy's exact Euclidean distance transform of the exhale image's
    pleura mask, in mm); without the depth limit most picks land on the lung surface, where
    the gradient is highest."""
    from scipy.ndimage import distance_transform_edt

    from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
    from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE
    from ProgressiveRegistrationLib.simulation.breathing import LANDMARK_DEPTH_MM

    inhale = sitk.ReadImage(str(BUNDLED_SAMPLE))
    grid = Grid.from_image(inhale)
    depth = {}
    for limit in (LANDMARK_DEPTH_MM, 0.0):
        pair = simulate(inhale, seed=2, amplitude_si_mm=20.0, n_landmarks=40, min_depth_mm=limit)
        pleura = mask_on(thorax_masks(pair.exhale).pleura, grid)
        inside_mm = distance_transform_edt(pleura, sampling=grid.spacing_mm[::-1])
        index = np.round(grid.points_to_index(pair.moving_points_lps)).astype(int)
        depth[limit] = inside_mm[index[:, 2], index[:, 1], index[:, 0]]
        assert len(depth[limit]) == 40
    # scipy's depth runs to the nearest outside voxel centre, so it is never less than the
    # picker's, which runs to the surface between voxels.
    assert depth[LANDMARK_DEPTH_MM].min() >= LANDMARK_DEPTH_MM, np.sort(depth[LANDMARK_DEPTH_MM])[:5]
    assert np.mean(depth[0.0] < LANDMARK_DEPTH_MM) > 0.5, np.sort(depth[0.0])
