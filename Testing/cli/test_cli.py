"""The command line as a user meets it: subcommands' values, and bad input as one error line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_bad_input, progreg

from ProgressiveRegistrationLib.io import landmarks


def test_tre_cli_with_transform(dirlab_root, tmp_path):
    fixed = dirlab_root / "Case1Pack" / "ExtremePhases" / "Case1_300_T00_xyz.txt"
    moving = dirlab_root / "Case1Pack" / "ExtremePhases" / "Case1_300_T50_xyz.txt"
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before_mm"]["mean"] == pytest.approx(3.89, abs=0.01) and "after_mm" not in out
    # A pure translation that moves every fixed point by the mean offset: TRE after = spread around it.
    f = landmarks.read_landmarks(fixed).to_lps(spacing_mm=(0.97, 0.97, 2.5))
    m = landmarks.read_landmarks(moving).to_lps(spacing_mm=(0.97, 0.97, 2.5))
    shift = (m - f).mean(0)
    tx = sitk.TranslationTransform(3, shift.tolist())
    sitk.WriteTransform(tx, str(tmp_path / "shift.tfm"))
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--transform", tmp_path / "shift.tfm", "--json")
    out = json.loads(r.stdout)
    expect = np.linalg.norm(f + shift - m, axis=1)
    assert out["after_mm"]["mean"] == pytest.approx(expect.mean(), abs=1e-6)
    # --snap rounds each prediction to its nearest voxel centre (the DIR-Lab leaderboard rule).
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--transform", tmp_path / "shift.tfm", "--snap",
                "--json")
    spacing = np.array([0.97, 0.97, 2.5])
    snapped = np.round((f + shift) / spacing) * spacing
    expect = np.linalg.norm(snapped - m, axis=1)
    assert json.loads(r.stdout)["after_mm"]["mean"] == pytest.approx(expect.mean(), abs=1e-6)
    assert abs(expect.mean() - np.linalg.norm(f + shift - m, axis=1).mean()) > 1e-3  # snapping changed something


def test_bad_input_is_one_error_line_and_exit_2(tmp_path):
    img2d = sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32))
    sitk.WriteImage(img2d, str(tmp_path / "flat.nrrd"))
    img4d = sitk.GetImageFromArray(np.random.rand(3, 4, 5, 6).astype(np.float32))
    sitk.WriteImage(img4d, str(tmp_path / "four.nii.gz"))
    nan = np.random.rand(10, 10, 10).astype(np.float32)
    nan[5, 5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    (tmp_path / "junk.nrrd").write_text("not an image", encoding="utf-8")
    (tmp_path / "empty_dicom").mkdir()
    for image in ("flat.nrrd", "four.nii.gz", "nan.nrrd", "junk.nrrd", "missing.nii.gz", "empty_dicom"):
        out = tmp_path / f"out_{image}"
        assert_bad_input(progreg("synth", tmp_path / image, "--out", out, "--size", 16), out)
    (tmp_path / "a.txt").write_text("1 2 3\n4 5 6\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("1 2 3\n", encoding="utf-8")
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "b.txt", "--spacing", 1, 1, 1))
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "nope.txt", "--spacing", 1, 1, 1))
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "a.txt"))  # voxel files need --spacing
    assert_bad_input(progreg("dirlab", tmp_path / "nowhere"))
