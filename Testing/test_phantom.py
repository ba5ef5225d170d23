"""The thorax phantom and the breathing simulator."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import SimpleITK as sitk
import torch
from conftest import MODULE_DIR

from ProgressiveRegistrationLib import fields, phantom
from ProgressiveRegistrationLib.breathing import simulate
from ProgressiveRegistrationLib.geometry import Grid
from ProgressiveRegistrationLib.transforms import displacement_image


def test_phantom_anatomy_and_values():
    p = phantom.generate(1, size=(96, 80, 64), spacing_mm=(3.2, 3.2, 5.0))
    a = sitk.GetArrayFromImage(p.image).astype(float)
    assert a.shape == (64, 80, 96) and p.image.GetSpacing() == (3.2, 3.2, 5.0)
    assert 0.04 < p.lungs.mean() < 0.4
    assert -920 < np.median(a[p.lungs]) < -780  # parenchyma
    assert a[0, 0, 0] < -950  # air outside the body
    assert (a > 500).sum() > 100  # ribs and spine
    body = a > -500
    assert 0.3 < body.mean() < 0.8
    # Vessels and airways make edges inside the lungs (what the gradient input needs).
    assert ((a > -400) & p.lungs).mean() / p.lungs.mean() > 0.005
    grid = Grid.from_image(p.image)
    idx = np.round(grid.points_to_index(p.bifurcations_lps)).astype(int)
    assert len(idx) > 20 and p.lungs[idx[:, 2], idx[:, 1], idx[:, 0]].all()


def test_phantoms_differ_per_seed_and_repeat_per_seed():
    a = sitk.GetArrayFromImage(phantom.generate(2, size=(64, 56, 40), spacing_mm=(4, 4, 6)).image)
    b = sitk.GetArrayFromImage(phantom.generate(2, size=(64, 56, 40), spacing_mm=(4, 4, 6)).image)
    c = sitk.GetArrayFromImage(phantom.generate(3, size=(64, 56, 40), spacing_mm=(4, 4, 6)).image)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(float) - c).mean() > 50


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


def test_phantom_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "phantom", "--out", str(tmp_path / "in.nrrd"),
                        "--exhale", str(tmp_path / "ex.nrrd"), "--size", "64", "64", "48", "--spacing", "4", "4", "6"],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"in.nrrd", "ex.nrrd", "in_landmarks.mrk.json", "ex_landmarks.mrk.json"}
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "phantom", "--out", str(tmp_path / "x.png")],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and not (tmp_path / "x.png").exists()
