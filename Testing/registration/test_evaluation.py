"""The register-and-score loop: DIR-Lab cases, and pairs scored exactly as the engine scores them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, progreg

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.metrics import snap_to_voxel, tre_mm
from ProgressiveRegistrationLib.io import dirlab
from ProgressiveRegistrationLib.io.resources import BUNDLED_MODEL as DEFAULT_MODEL
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.registration.evaluation import PointPair, score_pairs
from ProgressiveRegistrationLib.simulation.breathing import simulate


def test_dirlab_registers_cases_whose_images_are_present(tmp_path, tiny_model):
    """A DIR-Lab-shaped case 1 (raw int16 images, 1-based voxel landmarks) made from the sample."""
    from ProgressiveRegistrationLib.io.dirlab import CASES

    case = CASES[1]
    ref = sitk.Image(list(case.size), sitk.sitkFloat32)
    ref.SetSpacing(case.spacing_mm)
    sample = sitk.ReadImage(str(SAMPLE))
    # Centre the sample in the case's field of view.
    shift = np.asarray(sample.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in sample.GetSize()])) - \
        (np.asarray(case.size) - 1) / 2 * np.asarray(case.spacing_mm)
    fixed = sitk.Resample(sample, ref, sitk.TranslationTransform(3, shift.tolist()), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    p = simulate(fixed, seed=2, n_landmarks=30)
    folder = tmp_path / "Case1Pack"
    (folder / "Images").mkdir(parents=True)
    (folder / "ExtremePhases").mkdir()
    for phase, image, points in (("T00", p.inhale, p.fixed_points_lps), ("T50", p.exhale, p.moving_points_lps)):
        sitk.GetArrayFromImage(image).astype("<i2").tofile(folder / "Images" / f"case1_{phase}_s.img")
        idx1 = points / np.asarray(case.spacing_mm) + 1.0
        (folder / "ExtremePhases" / f"Case1_300_{phase}_xyz.txt").write_text(
            "".join(f"{x:.4f}\t{y:.4f}\t{z:.4f}\r\n" for x, y, z in idx1))
    r = progreg("dirlab", tmp_path, "--cases", "1", "--json", "--model", tiny_model, "--no-refine")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["cases"]["1"]
    assert c["images"] and c["n"] == 30
    expected_before = np.linalg.norm(p.fixed_points_lps - p.moving_points_lps, axis=1).mean()
    assert c["before_mm"]["mean"] == pytest.approx(expected_before, abs=1e-3)
    # The same pair through the engine in this process (the raw files hold what was written).
    fixed_pts, moving_pts = dirlab.case_points_mm(tmp_path, 1)
    t00, t50 = (dirlab.read_raw(f) for f in dirlab.image_files(tmp_path, 1))
    engine = register_images(t00, t50, load_model(tiny_model), "cpu", fixed_pts, moving_pts, warp_moving=False)
    assert c["after_mm"]["mean"] == pytest.approx(engine.landmarks["after_mm"].mean(), abs=1e-4)
    snapped = snap_to_voxel(engine.landmarks["predicted_lps"], Grid.from_image(t50))
    assert c["after_snapped_mm"]["mean"] == pytest.approx(tre_mm(snapped, moving_pts).mean(), abs=1e-4)
    assert c["folding_percent"] == pytest.approx(engine.folding_percent)
    if DEFAULT_MODEL.is_file():
        r = progreg("dirlab", tmp_path, "--cases", "1", "--json")
        c = json.loads(r.stdout)["cases"]["1"]
        assert c["after_mm"]["mean"] < c["before_mm"]["mean"], c


def test_score_pairs_scores_like_the_engine(tiny_model):
    sample = sitk.ReadImage(str(SAMPLE))
    pairs = [PointPair(f"seed{s}", b.inhale, b.exhale, b.fixed_points_lps, b.moving_points_lps, "breathing")
             for s, b in ((s, simulate(sample, seed=s, n_landmarks=20)) for s in (0, 1))]
    seen = []
    scores = list(score_pairs(pairs, tiny_model, progress=lambda p: seen.append(p.name)))
    assert seen == ["seed0", "seed1"] and [s.name for s in scores] == seen
    model = load_model(tiny_model)
    for pair, score in zip(pairs, scores):
        r = register_images(pair.fixed, pair.moving, model, "cpu", pair.fixed_lps, pair.moving_lps, warp_moving=False)
        np.testing.assert_allclose(score.after_mm, r.landmarks["after_mm"], atol=1e-6)
        np.testing.assert_allclose(score.before_mm, tre_mm(pair.fixed_lps, pair.moving_lps))
        np.testing.assert_array_equal(score.network_mm, score.after_mm)  # not refined
        assert score.folding_percent == pytest.approx(r.folding_percent) and score.kind == "breathing"
