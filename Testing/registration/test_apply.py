"""`progreg apply` and registration/apply.py against independent references: SimpleITK's own
resampler through an analytic transform, the exact inverse of a translation and of an affine
map, and a label map a voxel thin that nearest-neighbour sampling loses."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, assert_bad_input, progreg

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image, field_transform, write_transform
from ProgressiveRegistrationLib.io.landmarks import read_landmarks, write_markups_json
from ProgressiveRegistrationLib.registration.apply import points_to_fixed, resample_image, resample_label_map

SHIFT_MM = np.array([3.0, -2.0, 4.5])


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    """transform.nrrd of T(x) = x + SHIFT_MM on a grid covering the bundled CT."""
    d = tmp_path_factory.mktemp("apply")
    ct = sitk.ReadImage(str(SAMPLE))
    grid = Grid.from_image(ct).subsampled((2, 2, 2))
    disp = np.broadcast_to(SHIFT_MM, (*grid.shape_zyx, 3)).copy()
    write_transform(displacement_image(disp, grid), d / "transform.nrrd")
    sitk.WriteImage(ct, str(d / "ct.nrrd"))
    return d, ct


def test_an_image_goes_through_the_transform_as_itks_resampler_takes_it(translation):
    d, ct = translation
    ours = resample_image(ct, field_transform(sitk.ReadImage(str(d / "transform.nrrd"))), ct)
    reference = sitk.Resample(ct, ct, sitk.TranslationTransform(3, SHIFT_MM.tolist()), sitk.sitkLinear, -1024.0,
                              ct.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
    r = progreg("apply", d / "transform.nrrd", d / "ct.nrrd", "--reference", d / "ct.nrrd", "--out", d / "out.nrrd",
                "--interpolation", "bspline")
    assert r.returncode == 0, r.stderr
    bspline = sitk.Resample(ct, ct, sitk.TranslationTransform(3, SHIFT_MM.tolist()), sitk.sitkBSpline, -1024.0,
                            ct.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "out.nrrd"))),
                                  sitk.GetArrayFromImage(bspline))


def test_points_of_the_moving_image_go_through_the_inverse(translation, tmp_path):
    d, ct = translation
    moving = np.array([[-60.0, -40.0, -1200.0], [-100.5, 10.25, -1300.0]])
    write_markups_json(tmp_path / "moving.mrk.json", moving, ["a", "b"])
    r = progreg("apply", d / "transform.nrrd", tmp_path / "moving.mrk.json", "--out", tmp_path / "fixed.mrk.json")
    assert r.returncode == 0, r.stderr
    carried = read_landmarks(tmp_path / "fixed.mrk.json")
    assert carried.labels == ["a", "b"]
    np.testing.assert_allclose(carried.to_lps(), moving - SHIFT_MM, atol=1e-3)  # T(x) = y  <=>  x = y - shift
    r = progreg("apply", d / "transform.nrrd", tmp_path / "moving.mrk.json", "--out", tmp_path / "fixed.csv")
    assert r.returncode == 0, r.stderr
    as_csv = read_landmarks(tmp_path / "fixed.csv")
    assert as_csv.labels == ["a", "b"]
    np.testing.assert_allclose(as_csv.to_lps(), carried.to_lps(), atol=1e-3)
    # A linear transform file is inverted exactly.
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.02, 0.0, -0.01, 0.97, 0.03, 0.0, 0.01, 1.02))
    affine.SetTranslation((5.0, -3.0, 2.0))
    x = points_to_fixed(affine, moving)
    np.testing.assert_allclose([affine.TransformPoint(p.tolist()) for p in x], moving, atol=1e-9)


def test_a_label_map_a_voxel_thin_survives_smooth_resampling():
    labels = sitk.Image(20, 20, 21, sitk.sitkUInt8)
    arr = sitk.GetArrayFromImage(labels)
    arr[10] = 3  # a sheet one voxel thick
    labels = sitk.GetImageFromArray(arr)
    coarse = sitk.Image(20, 20, 10, sitk.sitkUInt8)
    coarse.SetSpacing((1.0, 1.0, 2.0))
    coarse.SetOrigin((0.0, 0.0, 0.5))  # samples halfway between the fine slices: k = 0.5, 2.5, ...
    identity = sitk.Transform(3, sitk.sitkIdentity)
    nearest = sitk.GetArrayFromImage(resample_label_map(labels, identity, coarse))
    smooth = sitk.GetArrayFromImage(resample_label_map(labels, identity, coarse, smooth=True))
    assert not (nearest == 3).any()  # lost between the samples
    assert (smooth == 3).any(axis=(1, 2)).sum() == 1 and set(np.unique(smooth)) == {0, 3}  # the sample at z = 10.5


def test_bad_input_is_one_line_and_nothing_written(translation, tmp_path):
    d, ct = translation
    far = sitk.Image(ct)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    out = tmp_path / "out"
    out.mkdir()
    r = progreg("apply", d / "transform.nrrd", tmp_path / "far.nrrd", "--reference", d / "ct.nrrd", "--out", out / "o.nrrd")
    assert_bad_input(r, out)
    assert "does not overlap" in r.stderr
    write_markups_json(tmp_path / "p.mrk.json", np.zeros((1, 3)))
    assert_bad_input(progreg("apply", d / "transform.nrrd", tmp_path / "p.mrk.json", "--out", out / "p.nrrd"), out)
    assert_bad_input(progreg("apply", d / "transform.nrrd", d / "ct.nrrd", "--out", out / "o.nrrd"), out)  # no --reference
    assert_bad_input(progreg("apply", d / "transform.nrrd", d / "ct.nrrd", "--reference", d / "ct.nrrd", "--out",
                             out / "o.xyz"), out)  # no such image format
    assert_bad_input(progreg("apply", tmp_path / "none.nrrd", d / "ct.nrrd", "--reference", d / "ct.nrrd", "--out",
                             out / "o.nrrd"), out)
    # A field that folds maps two points onto one: the inverse does not exist there.
    grid = Grid((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    disp = np.zeros((*grid.shape_zyx, 3))
    disp[..., 0] = -3.0 * grid.points_to_lps(np.stack(np.meshgrid(*[np.arange(10)] * 3, indexing="ij")[::-1], -1)
                                             .reshape(-1, 3).astype(float))[:, 0].reshape(grid.shape_zyx) * 0.2
    with pytest.raises(InputError, match="not invertible"):
        points_to_fixed(field_transform(displacement_image(disp, grid)), np.array([[9.0, 9.0, 9.0]]))


def test_the_inverse_transform_undoes_the_transform_and_carries_the_fixed_image_back(tmp_path, tiny_model):
    """`progreg register --inverse`: inverse_transform.nrrd on the moving image's grid, with
    φ(φ⁻¹(y)) = y through ITK's own transforms, its consistency in summary.json, and the fixed
    image carried onto the moving grid and back by `progreg apply` with both files."""
    import json

    from ProgressiveRegistrationLib.simulation.breathing import simulate

    pair = simulate(sitk.ReadImage(str(SAMPLE)), seed=4, amplitude_si_mm=8.0)
    sitk.WriteImage(pair.inhale, str(tmp_path / "fixed.nrrd"))
    moving = pair.exhale[:, :, 2:]  # another grid than the fixed image's
    sitk.WriteImage(moving, str(tmp_path / "moving.nrrd"))
    r = progreg("register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "--out", tmp_path / "o", "--model",
                tiny_model, "--refine-levels", "8", "--refine-iterations", "20", "--no-report", "--inverse", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    inverse_image = sitk.ReadImage(str(tmp_path / "o" / "inverse_transform.nrrd"))
    assert np.allclose(inverse_image.GetOrigin(), moving.GetOrigin()) and "inverse_transform.nrrd" in summary["files"]
    assert summary["inverse"]["grid"]["size"] == list(inverse_image.GetSize())
    forward = field_transform(sitk.ReadImage(str(tmp_path / "o" / "transform.nrrd")))
    backward = field_transform(inverse_image)
    rng = np.random.default_rng(0)
    size = np.asarray(moving.GetSize())
    points = [moving.TransformContinuousIndexToPhysicalPoint((rng.random(3) * 0.6 + 0.2) * (size - 1)) for _ in range(50)]
    back = np.array([forward.TransformPoint(backward.TransformPoint(p)) for p in points])
    error = np.linalg.norm(back - np.array(points), axis=1)  # between grid nodes: the inverse's interpolation too
    assert error.mean() < 0.05 and error.max() < 0.25, (error.mean(), error.max())
    assert summary["inverse"]["consistency_mm"]["p99_mm"] < 0.05
    # The fixed image onto the moving grid (through the inverse), then back (through the transform).
    r = progreg("apply", tmp_path / "o" / "inverse_transform.nrrd", tmp_path / "fixed.nrrd", "--reference",
                tmp_path / "moving.nrrd", "--out", tmp_path / "on_moving.nrrd")
    assert r.returncode == 0, r.stderr
    r = progreg("apply", tmp_path / "o" / "transform.nrrd", tmp_path / "on_moving.nrrd", "--reference",
                tmp_path / "fixed.nrrd", "--out", tmp_path / "back.nrrd")
    assert r.returncode == 0, r.stderr
    original = sitk.GetArrayFromImage(pair.inhale).astype(float)
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "back.nrrd"))).astype(float)
    inner = (slice(8, -8), slice(8, -8), slice(8, -8))
    assert np.median(np.abs(again[inner] - original[inner])) < 25  # HU: two linear interpolations, nothing lost
