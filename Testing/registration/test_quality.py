"""The quality checks against known answers: an analytic smooth field, a fold put in on
purpose, contours with a known Dice, landmarks with one gross outlier."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.transforms import displacement_image
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.registration.quality import (
    DEFAULT_TOLERANCES,
    Tolerance,
    contour_agreement,
    load_tolerances,
    local_ncc,
    quality_maps,
    quality_summary,
)
from ProgressiveRegistrationLib.simulation.breathing import simulate


@pytest.fixture(scope="module")
def pair():
    return simulate(sitk.ReadImage(str(SAMPLE)), seed=3, n_landmarks=40)


@pytest.fixture(scope="module")
def base(pair, tiny_model):
    return register_images(pair.inhale, pair.exhale, load_model(tiny_model), fixed_points_lps=pair.fixed_points_lps,
                           moving_points_lps=pair.moving_points_lps, refinement=None)


def _with_field(result, disp_lps: np.ndarray):
    """``result`` with its field replaced by ``disp_lps`` (``[k, j, i, 3]`` on its grid), and the
    Jacobian, folding and warped image that go with it."""
    grid = result.out_grid
    jac = fields.jacobian_determinant(torch.from_numpy(disp_lps).movedim(-1, 0), grid.index_to_lps[:3, :3]).numpy()
    folding = fields.folding_percent(torch.from_numpy(jac), torch.from_numpy(result.body_mask))
    return dataclasses.replace(result, displacement=displacement_image(disp_lps, grid), jacobian=jac,
                               folding_percent=folding, warped=None)


def _row(summary, check):
    return next(r for r in summary["checks"] if r["check"] == check)


def test_an_analytic_linear_field_has_its_exact_jacobian_and_consistency(base, pair):
    """d(x) = A (x − c): det J = det(I + A) everywhere, and the fixed-point inverse of an affine
    map is exact, so φ∘φ⁻¹ = id to the iteration's tolerance."""
    grid = base.out_grid
    a = np.array([[0.04, 0.01, 0.0], [0.0, -0.03, 0.02], [0.01, 0.0, 0.05]])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).reshape(-1, 3)
    x = grid.points_to_lps(idx)
    c = x.mean(0)
    disp = ((x - c) @ a.T).reshape(*grid.size, 3).transpose(2, 1, 0, 3).astype(np.float32)
    result = _with_field(base, np.ascontiguousarray(disp))
    q = quality_summary(result, quality_maps(result, pair.inhale, pair.exhale))
    expected = float(np.linalg.det(np.eye(3) + a))
    np.testing.assert_allclose(result.jacobian[result.body_mask], expected, atol=1e-4)
    assert _row(q, "jacobian_min")["value"] == pytest.approx(expected, abs=1e-4)
    assert _row(q, "folding_percent")["value"] == 0.0 and _row(q, "folding_percent")["verdict"] == "PASS"
    assert _row(q, "lung_jacobian_outside_percent")["value"] == 0.0
    assert _row(q, "inverse_consistency_max_mm")["value"] < 0.01
    assert _row(q, "inverse_consistency_mean_mm")["verdict"] == "PASS"


def test_a_fold_put_in_on_purpose_fails(base, pair):
    """A displacement that turns a slab of the lungs inside out: det J < 0 there, folding FAIL."""
    grid = base.out_grid
    disp = np.zeros((*grid.shape_zyx, 3), dtype=np.float32)
    k = np.arange(grid.shape_zyx[0], dtype=np.float32)
    centre = grid.shape_zyx[0] // 2
    # d_S(k) = -3 * (k - centre) * s_k within 4 slices of the centre: dφ_S/dS = 1 - 3 < 0 there.
    bump = np.where(np.abs(k - centre) <= 4, -3.0 * (k - centre) * grid.spacing_mm[2], 0.0)
    disp[..., 2] = bump[:, None, None]
    result = _with_field(base, disp)
    q = quality_summary(result, quality_maps(result, pair.inhale, pair.exhale))
    assert result.folding_percent > 0.01
    assert _row(q, "folding_percent")["verdict"] == "FAIL" and _row(q, "jacobian_min")["verdict"] == "FAIL"
    assert q["overall"] == "FAIL"


def test_one_gross_landmark_outlier_fails_the_maximum_not_the_mean(base, pair):
    n = len(pair.fixed_points_lps)
    after = np.full(n, 0.5)
    after[7] = 12.0
    landmarks = {**base.landmarks, "after_mm": after, "used": np.ones(n, dtype=bool)}
    result = dataclasses.replace(base, landmarks=landmarks)
    q = quality_summary(result, quality_maps(result, pair.inhale, pair.exhale))
    assert _row(q, "tre_mean_mm")["value"] == pytest.approx((0.5 * (n - 1) + 12.0) / n)
    assert _row(q, "tre_mean_mm")["verdict"] == "PASS" and _row(q, "tre_max_mm")["verdict"] == "FAIL"
    assert _row(q, "tre_max_mm")["value"] == 12.0 and q["overall"] == "FAIL"


def test_contours_with_a_known_dice_and_surface_distance():
    """Two 20-voxel cubes, one shifted by 4 voxels (2 mm each) along i: Dice = 16/20; every
    surface distance is 0 or at most the shift (8 mm); HD95 = 8 mm."""
    a = np.zeros((30, 30, 40), dtype=np.uint8)
    b = np.zeros_like(a)
    a[5:25, 5:25, 5:25] = 3
    b[5:25, 5:25, 9:29] = 3
    images = []
    for arr in (a, b):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((2.0, 2.0, 2.0))
        images.append(im)
    c = contour_agreement(*images)
    assert set(c) == {3}
    assert c[3]["dice"] == pytest.approx(2 * 16 * 20 * 20 / (2 * 20**3))
    assert c[3]["hd95_mm"] == pytest.approx(8.0, abs=0.01)
    assert 0.0 < c[3]["mean_surface_distance_mm"] < 8.0
    same = contour_agreement(images[0], images[0])[3]
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0 and same["mean_surface_distance_mm"] == 0.0


def test_local_ncc_of_known_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 14, 16)).astype(np.float32)
    np.testing.assert_allclose(local_ncc(a, a), 1.0, atol=1e-5)
    np.testing.assert_allclose(local_ncc(a, -2.0 * a + 5.0), -1.0, atol=1e-5)
    assert np.all(local_ncc(a, np.zeros_like(a)) == 0.0)  # a flat window: no agreement, not 0/0


def test_tolerances_and_verdicts(tmp_path):
    t = Tolerance(1.0, 2.0)
    assert [t.verdict(v) for v in (0.5, 1.0, 1.5, 2.5, float("nan"), None)] == ["PASS", "PASS", "WARN", "FAIL",
                                                                               "n/a", "n/a"]
    up = Tolerance(0.85, 0.8, higher_is_better=True)
    assert [up.verdict(v) for v in (0.9, 0.82, 0.7)] == ["PASS", "WARN", "FAIL"]
    (tmp_path / "t.yaml").write_text("tre_mean_mm: {warn: 1.0, fail: 1.2}\n")
    loaded = load_tolerances(tmp_path / "t.yaml")
    assert loaded["tre_mean_mm"] == Tolerance(1.0, 1.2, False, "t.yaml")
    assert loaded["tre_max_mm"] == DEFAULT_TOLERANCES["tre_max_mm"]
    (tmp_path / "t.json").write_text(json.dumps({"dice": {"fail": 0.7}}))
    assert load_tolerances(tmp_path / "t.json")["dice"].fail == 0.7
    for text, says in (("nonsense_check: {warn: 1}", "unknown check"), ("tre_mean_mm: 3", "needs warn"),
                       ("tre_mean_mm: {warn: x}", "must be numbers"), ("[1, 2]", "expected a mapping")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(InputError, match=says):
            load_tolerances(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="no such file"):
        load_tolerances(tmp_path / "missing.yaml")


def test_the_maps_grids_cover_the_grid_and_index_it_alike():
    """A grid over the voxel budgets (odd sizes, anisotropic): the subsampled grid's arrays come
    from the full grid's by the returned index, shape for shape, the last sample clamped."""
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.registration.quality import consistency_stride, subsampling

    grid = Grid((257, 257, 131), (0.98, 0.98, 2.0), (0.0, 0.0, 0.0))
    for budget in (2_000_000, 300_000):
        coarse, index = subsampling(grid, budget)
        assert np.prod(coarse.size) <= budget
        full = np.arange(np.prod(grid.shape_zyx)).reshape(grid.shape_zyx)
        assert full[index].shape == coarse.shape_zyx
        stride = consistency_stride(grid, budget)
        assert abs(stride[0] - stride[1]) <= 1 and stride[2] <= max(stride[:2])  # the finest axes are thinned first
        # every coarse sample sits where the fine grid has the voxel it was taken from (or beyond its last one)
        k, j, i = (np.asarray(a).ravel() for a in index)
        assert i[-1] == grid.size[0] - 1 and k[0] == 0
