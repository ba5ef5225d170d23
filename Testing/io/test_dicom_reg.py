"""DICOM Deformable Spatial Registration objects (--dicom-reg): valid by dciodvfy, referencing
both series, holding the transform's own grid; refused without DICOM inputs."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, assert_bad_input, dicom_errors, flipped, progreg, write_ct_series

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image, field_transform, transform_points
from ProgressiveRegistrationLib.io.dicom_reg import SOP_CLASS_UID, read_registration_grid, right_handed
from ProgressiveRegistrationLib.simulation.breathing import simulate


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The simulated pair as two DICOM CT series, in two studies with two frames of reference."""
    root = tmp_path_factory.mktemp("dicom")
    pair = simulate(sitk.ReadImage(str(SAMPLE)), seed=1, n_landmarks=20)
    fixed = write_ct_series(pair.inhale, root / "fixed", "1.2.826.1.1", "1.2.826.1.1.1", "1.2.826.1.1.9", 1)
    moving = write_ct_series(pair.exhale, root / "moving", "1.2.826.1.2", "1.2.826.1.2.1", "1.2.826.1.2.9", 2)
    return root, fixed, moving


def test_the_registration_object_is_valid_and_holds_the_transform(series, tiny_model):
    root, fixed_uids, moving_uids = series
    out = root / "out"
    result = progreg("register", root / "fixed", root / "moving", "--out", out, "--model", tiny_model, "--no-refine",
                     "--no-report", "--no-overview", "--no-warped", "--dicom-reg")
    assert result.returncode == 0, result.stderr
    path = out / "registration.dcm"
    assert dicom_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SOP_CLASS_UID and ds.Modality == "REG"
    assert ds.PatientID == "P1" and ds.StudyInstanceUID == "1.2.826.1.1" and ds.FrameOfReferenceUID == "1.2.826.1.1.9"
    itself, deformed = ds.DeformableRegistrationSequence
    assert itself.SourceFrameOfReferenceUID == "1.2.826.1.1.9" and "DeformableRegistrationGridSequence" not in itself
    assert deformed.SourceFrameOfReferenceUID == "1.2.826.1.2.9"
    assert [r.ReferencedSOPInstanceUID for r in itself.ReferencedImageSequence] == fixed_uids
    assert [r.ReferencedSOPInstanceUID for r in deformed.ReferencedImageSequence] == moving_uids
    identity = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    for seq in ("PreDeformationMatrixRegistrationSequence", "PostDeformationMatrixRegistrationSequence"):
        assert [float(v) for v in deformed[seq][0].FrameOfReferenceTransformationMatrix] == identity
    # Both series referenced: the fixed in this study, the moving in the other one.
    assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == ["1.2.826.1.1.1"]
    other = ds.StudiesContainingOtherReferencedInstancesSequence[0]
    assert other.StudyInstanceUID == "1.2.826.1.2"
    assert [r.ReferencedSOPInstanceUID for r in other.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
        moving_uids
    # The grid is transform.nrrd's: same points, same vectors (float32 both).
    grid, registered, source = read_registration_grid(path)
    transform = sitk.ReadImage(str(out / "transform.nrrd"))
    assert (registered, source) == ("1.2.826.1.1.9", "1.2.826.1.2.9")
    assert Grid.from_image(grid) == Grid.from_image(transform)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(grid), sitk.GetArrayFromImage(transform))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dicom_reg"]["source_frame_of_reference_uid"] == "1.2.826.1.2.9"


def test_a_left_handed_grid_is_stored_right_handed():
    """DICOM's grid axes are row, column and their cross product: a field on a grid stored
    with one axis reversed keeps its samples at their points, in another order."""
    base = Grid((5, 6, 7), (2.0, 2.5, 3.0), (-10.0, 5.0, 20.0))
    k, j, i = np.meshgrid(*(np.arange(n) for n in base.shape_zyx), indexing="ij")
    x = base.points_to_lps(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*base.shape_zyx, 3)
    field = displacement_image(np.stack([np.sin(x[..., 2] / 9), x[..., 0] / 30, np.cos(x[..., 1] / 7)], -1), base)
    for axis in (0, 2):
        left = flipped(field, axis)
        assert np.linalg.det(np.reshape(left.GetDirection(), (3, 3))) < 0
        data, grid = right_handed(left)
        assert np.linalg.det(grid.direction_matrix) > 0
        stored = displacement_image(data, grid)
        points = x.reshape(-1, 3)[::7]
        np.testing.assert_allclose(transform_points(field_transform(stored), points),
                                   transform_points(field_transform(field), points), atol=1e-5)


def test_inputs_that_are_not_dicom_are_refused(tmp_path, tiny_model):
    image = sitk.ReadImage(str(SAMPLE))
    sitk.WriteImage(image, str(tmp_path / "fixed.nrrd"))
    out = tmp_path / "out"
    result = progreg("register", tmp_path / "fixed.nrrd", tmp_path / "fixed.nrrd", "--out", out, "--model",
                     tiny_model, "--no-refine", "--dicom-reg")
    assert_bad_input(result, out)
    assert "DICOM" in result.stderr
