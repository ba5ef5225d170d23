"""The module's logic on real MRML nodes (the slicer-core wheel: Slicer's MRML without Qt)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from ProgressiveRegistrationLib import mrml  # noqa: E402
from ProgressiveRegistrationLib.errors import InputError  # noqa: E402
from ProgressiveRegistrationLib.registration import load_model, register_images  # noqa: E402
from ProgressiveRegistrationLib.transforms import transform_points  # noqa: E402

RAS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_outputs_match_the_engine(scene, tiny_model, tmp_path):
    fixed, moving, fpts, mpts = mrml.sample_pair_nodes(scene)
    n_before = scene.GetNumberOfNodes()
    r = mrml.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model)
    assert r.transform.IsA("vtkMRMLGridTransformNode") and r.table is not None
    assert scene.GetNumberOfNodes() > n_before
    assert r.transform.GetNodeReference("fixedVolume") is fixed
    assert r.transform.GetNodeReference("movingVolume") is moving
    assert moving.GetParentTransformNode() is r.transform
    assert fixed.GetParentTransformNode() is None

    # The engine on the same images gives φ; FromParent must map fixed RAS points to φ in RAS.
    f_img = mrml.image_from_volume_node(fixed, "f")
    m_img = mrml.image_from_volume_node(moving, "m")
    f_lps, labels = mrml.markups_lps(fpts)
    m_lps, _ = mrml.markups_lps(mpts)
    engine = register_images(f_img, m_img, load_model(tiny_model), fixed_points_lps=f_lps, moving_points_lps=m_lps,
                             warp_moving=False)
    phi_lps = transform_points(engine.transform(), f_lps)
    from_parent = r.transform.GetTransformFromParent()
    got_ras = np.array([from_parent.TransformPoint(*(p * RAS)) for p in f_lps])
    np.testing.assert_allclose(got_ras * RAS, phi_lps, atol=1e-3)
    assert np.abs(phi_lps - f_lps).max() > 0.1  # the transform is not the identity

    # Markups under the transform are shown at φ⁻¹: hardening them and applying φ gives them back.
    probe = mrml.add_points_node(scene, phi_lps, "probe")
    probe.SetAndObserveTransformNodeID(r.transform.GetID())
    logic = slicer.vtkSlicerTransformLogic()
    logic.hardenTransform(probe)
    hardened_lps, _ = mrml.markups_lps(probe)
    np.testing.assert_allclose(hardened_lps, f_lps, atol=0.05)

    # Jacobian volume on the fixed geometry.
    assert r.jacobian.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    np.testing.assert_allclose(mrml._ijk_to_ras(r.jacobian), mrml._ijk_to_ras(fixed), atol=1e-6)
    jac = slicer.util.arrayFromVolume(r.jacobian)
    assert np.isfinite(jac).all() and 0.2 < np.median(jac) < 5
    display = r.jacobian.GetDisplayNode()
    colors = scene.GetNodeByID(display.GetColorNodeID())
    assert colors.GetName() == mrml.JACOBIAN_COLORS and display.GetWindowLevelMin() == 0.0
    rgba = [0.0] * 4
    colors.GetColor(0, rgba)
    assert rgba[:3] == [1.0, 0.0, 1.0]  # folding stands out

    # Table: one row per landmark plus mean and sd, equal to the engine's TRE.
    table = r.table.GetTable()
    assert table.GetNumberOfRows() == len(labels) + 2
    after = np.array([table.GetValue(i, 2).ToDouble() for i in range(len(labels))])
    np.testing.assert_allclose(after, engine.landmarks["after_mm"], atol=1e-6)

    # Saved through Slicer's storage node and read back by SimpleITK: the same points.
    for suffix in ("h5", "nrrd"):
        storage = slicer.vtkMRMLTransformStorageNode()
        scene.AddNode(storage)
        path = str(tmp_path / f"saved.{suffix}")
        storage.SetFileName(path)
        assert storage.WriteData(r.transform), suffix
        if suffix == "h5":
            tx = sitk.ReadTransform(path)
        else:
            tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64))
        np.testing.assert_allclose(transform_points(tx, f_lps), phi_lps, atol=1e-3, err_msg=suffix)


def test_table_equals_cli_tre_csv(scene, tiny_model, tmp_path):
    fixed, moving, fpts, mpts = mrml.sample_pair_nodes(scene)
    job = mrml.export_job(scene, fixed, moving, tmp_path, fpts, mpts)
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "register", job.fixed_path, job.moving_path,
                        "--out", job.out_dir, "--fixed-landmarks", job.fixed_landmarks_path, "--moving-landmarks",
                        job.moving_landmarks_path, "--model", tiny_model, "--progress-json"],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert '"fraction": 1.0' in r.stdout
    loaded = mrml.load_results(scene, job)
    direct = mrml.register_volume_nodes(scene, fixed, moving, fpts, mpts,
                                        model=tiny_model, apply_to_moving=False)
    labels, before, after = mrml.read_tre_csv(f"{job.out_dir}/tre.csv")
    for res in (loaded, direct):
        t = res.table.GetTable()
        assert [t.GetValue(i, 0).ToString() for i in range(len(labels))] == labels
        np.testing.assert_allclose([t.GetValue(i, 1).ToDouble() for i in range(len(labels))], before, atol=1e-3)
        np.testing.assert_allclose([t.GetValue(i, 2).ToDouble() for i in range(len(labels))], after, atol=1e-3)
    assert loaded.folding_percent == pytest.approx(direct.folding_percent)


def test_bad_input_leaves_no_nodes(scene, tiny_model):
    fixed, moving, fpts, mpts = mrml.sample_pair_nodes(scene)
    flat = mrml.add_volume_node(scene, sitk.GetImageFromArray(np.random.rand(1, 20, 20).astype(np.float32)), "flat")
    short = mrml.add_points_node(scene, mrml.markups_lps(fpts)[0][:-1], "short")
    moving_before = slicer.util.arrayFromVolume(moving).copy()
    count = scene.GetNumberOfNodes()
    for args, match in (((fixed, fixed), "different nodes"), ((flat, moving), "at least 2 voxels"),
                        ((fixed, moving, fpts, short), "pair up"), ((fixed, moving, fpts, None), "both")):
        with pytest.raises(InputError, match=match):
            mrml.register_volume_nodes(scene, *args, model=tiny_model)
        assert scene.GetNumberOfNodes() == count
    assert moving.GetParentTransformNode() is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), moving_before)


def test_public_scripting_api(scene, tiny_model):
    import ProgressiveRegistrationLib

    fixed, moving, _, _ = mrml.sample_pair_nodes(scene)
    r = ProgressiveRegistrationLib.register_volume_nodes(scene, fixed, moving, model=tiny_model)
    assert r.table is None and r.transform is not None and r.jacobian is not None
    assert "Folding" in r.describe()
