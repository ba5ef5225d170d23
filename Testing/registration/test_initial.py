"""An initial transform: composed exactly with the registration's field, a moving image in
another frame registered from it, and transforms that cannot be a start refused."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, assert_bad_input, progreg, rotation

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image, field_transform, transform_points
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.registration.initial import check_initial, compose
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT
from ProgressiveRegistrationLib.simulation.breathing import simulate

OFFSET_MM = np.array([200.0, -150.0, 30.0])  # another scanner's table position


@pytest.fixture(scope="module")
def pair():
    return simulate(sitk.ReadImage(str(SAMPLE)), seed=1, n_landmarks=20)


@pytest.fixture(scope="module")
def elsewhere(pair):
    """The moving image in another frame: every voxel moved by OFFSET_MM."""
    moved = sitk.Image(pair.exhale)
    moved.SetOrigin(tuple(np.asarray(pair.exhale.GetOrigin()) + OFFSET_MM))
    return moved


def _oblique_grid() -> Grid:
    return Grid((9, 8, 7), (2.0, 3.0, 4.0), (10.0, -5.0, 3.0), tuple(rotation(0.3, -0.2, 0.5).ravel()))


def _points(grid: Grid) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    return grid.points_to_lps(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*grid.shape_zyx, 3)


def test_composition_with_an_affine_is_exact():
    grid = _oblique_grid()
    x = _points(grid)
    d = np.stack([3 * np.sin(x[..., 1] / 15), -2 * np.cos(x[..., 2] / 9), 1.5 * np.sin(x[..., 0] / 11)], -1)
    matrix = rotation(0.1, 0.05, -0.2) * 1.05
    affine = sitk.AffineTransform(tuple(matrix.ravel()), (4.0, -7.0, 12.0), (1.0, 2.0, 3.0))
    expected = (x + d - [1, 2, 3]) @ matrix.T + [1, 2, 3] + [4, -7, 12] - x
    np.testing.assert_allclose(compose(affine, d.astype(np.float32), grid), expected, atol=1e-4)


def test_composition_with_a_displacement_field_follows_itk():
    """An initial displacement field on a coarser grid of its own, evaluated where the
    registration's field leads (between its samples): ITK's TransformPoint is the reference."""
    grid = _oblique_grid()
    x = _points(grid)
    d = np.stack([np.sin(x[..., 1] / 7), np.cos(x[..., 0] / 5), 0.5 * np.sin(x[..., 2] / 3)], -1).astype(np.float32)
    coarse = Grid((6, 6, 6), (8.0, 8.0, 8.0), (-20.0, -30.0, -20.0))
    e = _points(coarse)
    initial = field_transform(displacement_image(np.stack([e[..., 2] / 10, 2 + 0 * e[..., 0], e[..., 0] / 20], -1),
                                                 coarse))
    got = compose(initial, d, grid)
    expected = transform_points(initial, (x + d).reshape(-1, 3)).reshape(x.shape) - x
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_moving_image_in_another_frame_registers_from_the_initial_transform(pair, elsewhere, tiny_model):
    """The network's field of the pair as given and of the moved copy started from the
    translation that undoes the move: the same, plus the translation (one network pass is
    deterministic to float rounding). Refined, the landmarks' error agrees too."""
    model = load_model(tiny_model)
    initial = sitk.TranslationTransform(3, tuple(OFFSET_MM))
    with pytest.raises(InputError, match="does not overlap"):
        register_images(pair.inhale, elsewhere, model)
    for refinement, tolerance in ((None, 1e-3), (DEFAULT, None)):
        plain = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps, pair.moving_points_lps,
                                refinement=refinement)
        started = register_images(pair.inhale, elsewhere, model, "cpu", pair.fixed_points_lps,
                                  pair.moving_points_lps + OFFSET_MM, refinement=refinement, initial=initial)
        if tolerance is not None:
            diff = sitk.GetArrayFromImage(started.displacement) - OFFSET_MM - sitk.GetArrayFromImage(plain.displacement)
            assert np.abs(diff).max() < tolerance
        assert abs(started.landmarks["after_mm"].mean() - plain.landmarks["after_mm"].mean()) < 0.05
        assert started.landmarks["before_mm"].mean() > np.linalg.norm(OFFSET_MM) - 20
        # The warped image is the original moving image through the whole transform.
        itk = sitk.Resample(elsewhere, pair.inhale, started.transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
        diff = np.abs(sitk.GetArrayFromImage(itk) - sitk.GetArrayFromImage(started.warped))
        assert (diff > 1).mean() < 1e-3


@pytest.mark.parametrize("initial, message", [
    (sitk.ScaleTransform(3, (-1.0, 1.0, 1.0)), "not invertible"),
    (sitk.ScaleTransform(3, (1.0, 0.0, 1.0)), "not invertible"),
    (sitk.TranslationTransform(3, (0.0, 0.0, 900.0)), "carries only"),
])
def test_a_transform_that_cannot_start_the_registration_is_refused(pair, initial, message):
    with pytest.raises(InputError, match=message):
        check_initial(initial, pair.inhale, pair.exhale, "initial transform")


def test_a_folding_initial_field_is_refused(pair):
    grid = Grid.from_image(pair.inhale).subsampled((4, 4, 4))
    x = _points(grid)
    centre = x.reshape(-1, 3).mean(0)
    folding = -2.0 * (x - centre) * np.exp(-np.sum((x - centre) ** 2, -1, keepdims=True) / 40.0 ** 2)
    with pytest.raises(InputError, match="not invertible"):
        check_initial(field_transform(displacement_image(folding, grid)), pair.inhale, pair.exhale, "initial")


def test_command_line(pair, elsewhere, tmp_path, tiny_model):
    sitk.WriteImage(pair.inhale, str(tmp_path / "fixed.nrrd"))
    sitk.WriteImage(elsewhere, str(tmp_path / "moving.nrrd"))
    sitk.WriteTransform(sitk.TranslationTransform(3, tuple(OFFSET_MM)), str(tmp_path / "initial.tfm"))
    sitk.WriteTransform(sitk.ScaleTransform(3, (-1.0, 1.0, 1.0)), str(tmp_path / "mirror.tfm"))
    common = ("register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "--model", tiny_model, "--no-refine",
              "--no-report", "--no-overview")
    for initial in ("mirror.tfm", "missing.h5"):
        out = tmp_path / f"out_{initial}"
        assert_bad_input(progreg(*common, "--out", out, "--initial-transform", tmp_path / initial), out)
    out = tmp_path / "out"
    result = progreg(*common, "--out", out, "--initial-transform", tmp_path / "initial.tfm")
    assert result.returncode == 0, result.stderr
    # The written transform alone carries the moved image onto the fixed one.
    tx = field_transform(sitk.ReadImage(str(out / "transform.nrrd")))
    mapped = transform_points(tx, pair.fixed_points_lps)
    assert np.all(np.linalg.norm(mapped - pair.fixed_points_lps - OFFSET_MM, axis=1) < 30)
    summary = (out / "summary.json").read_text()
    assert "initial.tfm" in summary
