"""The procedural thorax phantom."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from conftest import MODULE_DIR

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.simulation import phantom


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


def test_phantom_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "phantom", "--out", str(tmp_path / "in.nrrd"),
                        "--exhale", str(tmp_path / "ex.nrrd"), "--size", "64", "64", "48", "--spacing", "4", "4", "6"],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"in.nrrd", "ex.nrrd", "in_landmarks.mrk.json", "ex_landmarks.mrk.json"}
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "phantom", "--out", str(tmp_path / "x.png")],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and not (tmp_path / "x.png").exists()
