"""The module's logic on real MRML nodes (the slicer-core wheel: Slicer's MRML without Qt)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from ProgressiveRegistrationLib.core.errors import InputError  # noqa: E402
from ProgressiveRegistrationLib.core.itk_fields import transform_points  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import load_model  # noqa: E402
from ProgressiveRegistrationLib.registration.engine import register_images  # noqa: E402
from ProgressiveRegistrationLib.registration.outputs import read_tre_csv  # noqa: E402
from ProgressiveRegistrationLib.registration.tolerances import tolerance_text, value_text  # noqa: E402
from ProgressiveRegistrationLib.slicer import inprocess, mrml  # noqa: E402

RAS = np.array([-1.0, -1.0, 1.0])


def _tre_through_node(transform_node, fixed_node, moving_node) -> np.ndarray:
    """Per landmark |T(f) - m| (mm), T the node's FromParent transform as Slicer evaluates it."""
    t = transform_node.GetTransformFromParent()
    f = slicer.util.arrayFromMarkupsControlPoints(fixed_node, world=True)
    m = slicer.util.arrayFromMarkupsControlPoints(moving_node, world=True)
    return np.linalg.norm(np.array([t.TransformPoint(*p) for p in f]) - m, axis=1)


@pytest.fixture
def vtk_errors():
    """What VTK reports while the test runs (errors and warnings), as text."""
    import vtk

    previous = vtk.vtkOutputWindow.GetInstance()
    window = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(window)
    yield window.GetOutput
    vtk.vtkOutputWindow.SetInstance(previous)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_outputs_match_the_engine(scene, tiny_model, tmp_path):
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    n_before = scene.GetNumberOfNodes()
    r = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model, refinement=None)
    assert r.transform.IsA("vtkMRMLGridTransformNode") and r.table is not None
    assert scene.GetNumberOfNodes() > n_before
    # The registration roles of vtkMRMLTransformNode.h, as Slicer's own registration modules set them.
    assert r.transform.GetNodeReference("spatialRegistrationFixed") is fixed
    assert r.transform.GetNodeReference("spatialRegistrationMoving") is moving
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
    assert from_parent.GetInterpolationModeAsString() == "Cubic"
    # At the grid's nodes the node holds φ exactly; between them Slicer interpolates cubically
    # where ITK interpolates linearly: less than a tenth of a millimetre apart here.
    field = engine.displacement
    nodes_lps = np.array([field.TransformIndexToPhysicalPoint([int(v) for v in ijk])
                          for ijk in np.random.default_rng(0).integers(0, np.asarray(field.GetSize()) - 1, (50, 3))])
    got_nodes = np.array([from_parent.TransformPoint(*(p * RAS)) for p in nodes_lps]) * RAS
    np.testing.assert_allclose(got_nodes, transform_points(engine.transform(), nodes_lps), atol=1e-3)
    got_ras = np.array([from_parent.TransformPoint(*(p * RAS)) for p in f_lps])
    np.testing.assert_allclose(got_ras * RAS, phi_lps, atol=0.1)
    assert np.abs(phi_lps - f_lps).max() > 0.1  # the transform is not the identity

    # Markups under the transform are shown at φ⁻¹: hardening them and applying φ gives them back.
    probe = mrml.add_points_node(scene, phi_lps, "probe")
    probe.SetAndObserveTransformNodeID(r.transform.GetID())
    logic = slicer.vtkSlicerTransformLogic()
    logic.hardenTransform(probe)
    hardened_lps, _ = mrml.markups_lps(probe)
    np.testing.assert_allclose(hardened_lps, f_lps, atol=0.1)

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

    # Table: one row per landmark plus mean and sd; before and network alone are the engine's,
    # after is measured through the transform node (Slicer's cubic interpolation), as the header says.
    table = r.table.GetTable()
    assert table.GetNumberOfRows() == len(labels) + 2
    assert [table.GetColumnName(c) for c in range(1, 4)] == list(mrml.TRE_COLUMNS)
    assert "transform node" in table.GetColumnName(3) and "engine" in table.GetColumnName(2)
    for column, key in ((1, "before_mm"), (2, "network_mm")):
        values = np.array([table.GetValue(i, column).ToDouble() for i in range(len(labels))])
        np.testing.assert_allclose(values, engine.landmarks[key], atol=1e-6)
    after = np.array([table.GetValue(i, 3).ToDouble() for i in range(len(labels))])
    np.testing.assert_allclose(after, _tre_through_node(r.transform, fpts, mpts), atol=1e-6)
    np.testing.assert_allclose(after, engine.landmarks["after_mm"], atol=0.1)  # cubic vs linear: close, not equal
    assert r.tre_after_mm["mean"] == pytest.approx(after.mean())
    assert r.tre_after_engine_mm["mean"] == pytest.approx(engine.landmarks["after_mm"].mean())

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
        # ... and loaded again by Slicer: the same transform as the one in the scene.
        reloaded = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
        assert storage.ReadData(reloaded), suffix
        again = reloaded.GetTransformFromParent()
        probe_ras = np.array([p * RAS for p in f_lps]) + np.random.default_rng(1).uniform(-3, 3, f_lps.shape)
        np.testing.assert_allclose([again.TransformPoint(*p) for p in probe_ras],
                                   [from_parent.TransformPoint(*p) for p in probe_ras], atol=1e-4, err_msg=suffix)


def test_table_equals_cli_tre_csv(scene, tiny_model, tmp_path):
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    job = mrml.export_job(scene, fixed, moving, tmp_path, fpts, mpts)
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "register", job.fixed_path, job.moving_path,
                        "--out", job.out_dir, "--fixed-landmarks", job.fixed_landmarks_path, "--moving-landmarks",
                        job.moving_landmarks_path, "--model", tiny_model, "--progress-json"],
                       cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert '"fraction": 1.0' in r.stdout
    loaded = mrml.load_results(scene, job)
    direct = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts,
                                        model=tiny_model, apply_to_moving=False)
    labels, *columns = read_tre_csv(f"{job.out_dir}/tre.csv")
    for res in (loaded, direct):
        t = res.table.GetTable()
        assert [t.GetValue(i, 0).ToString() for i in range(len(labels))] == labels
        for c, expected in enumerate(columns[:2], start=1):
            np.testing.assert_allclose([t.GetValue(i, c).ToDouble() for i in range(len(labels))], expected, atol=1e-3)
        # The TRE column is the TRE of the transform the user has, through its node, to 0.01 mm.
        after = np.array([t.GetValue(i, 3).ToDouble() for i in range(len(labels))])
        np.testing.assert_allclose(after, _tre_through_node(res.transform, fpts, mpts), atol=0.01)
        assert abs(res.tre_after_mm["mean"] - after.mean()) < 0.01
    assert loaded.summary["refinement"] and direct.summary["refinement"]  # both refined, by default
    assert loaded.folding_percent == pytest.approx(direct.folding_percent)


def test_the_inverse_transform_node_undoes_the_result(scene, tiny_model, tmp_path):
    """In-process (inverse=True) and through the panel's background run (--inverse): a grid
    transform node on the moving volume's geometry whose FromParent, after the result's, gives
    every point back (Slicer's own evaluation of both grid transforms), belonging to the pair."""
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    r = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, quality=False,
                                        inverse=True, apply_to_moving=False)
    job = mrml.export_job(scene, fixed, moving, tmp_path)
    run = subprocess.run(job.command(sys.executable, tiny_model, refine=False, inverse=True), cwd=MODULE_DIR,
                         capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    loaded = mrml.load_results(scene, job, apply_to_moving=False)
    assert loaded.inverse is not None and loaded.inverse is not r.inverse  # a node of its own, refilled only for its pair
    points = slicer.util.arrayFromVolume(moving).shape  # (k, j, i)
    ijk_to_ras = mrml._ijk_to_ras(moving)
    rng = np.random.default_rng(1)
    for nodes in (r, loaded):
        assert mrml.pair_of(nodes.inverse) == (fixed.GetID(), moving.GetID())
        forward, backward = nodes.transform.GetTransformFromParent(), nodes.inverse.GetTransformFromParent()
        for _ in range(20):
            ijk = (rng.random(3) * 0.6 + 0.2) * np.array(points[::-1])
            y = (ijk_to_ras @ np.append(ijk, 1.0))[:3]
            back = np.array(forward.TransformPoint(*backward.TransformPoint(*y)))
            assert np.linalg.norm(back - y) < 0.3, (back, y)


def test_the_tre_table_marks_the_landmarks_the_refinement_made_worse(scene):
    node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    mrml.set_tre_table(node, ["F-1", "F-2", "F-3"], np.array([5.0, 4.0, 6.0]), np.array([0.51, 1.0, 2.0]),
                       np.array([2.82, 1.3, 1.0]))
    table = node.GetTable()
    assert table.GetColumnName(4) == mrml.WORSE_COLUMN
    assert [table.GetValue(i, 4).ToString() for i in range(5)] == ["+2.31 mm", "", "", "", ""]


def test_bad_input_leaves_no_nodes(scene, tiny_model):
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    flat = mrml.add_volume_node(scene, sitk.GetImageFromArray(np.random.rand(1, 20, 20).astype(np.float32)), "flat")
    short = mrml.add_points_node(scene, mrml.markups_lps(fpts)[0][:-1], "short")
    moving_before = slicer.util.arrayFromVolume(moving).copy()
    count = scene.GetNumberOfNodes()
    for args, match in (((fixed, fixed), "different nodes"), ((flat, moving), "at least 2 voxels"),
                        ((fixed, moving, fpts, short), "pair up"), ((fixed, moving, fpts, None), "both")):
        with pytest.raises(InputError, match=match):
            inprocess.register_volume_nodes(scene, *args, model=tiny_model)
        assert scene.GetNumberOfNodes() == count
    assert moving.GetParentTransformNode() is None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), moving_before)


def test_public_scripting_api(scene, tiny_model):
    import ProgressiveRegistrationLib

    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    r = ProgressiveRegistrationLib.register_volume_nodes(scene, fixed, moving, model=tiny_model)
    assert r.table is None and r.transform is not None and r.jacobian is not None
    assert "Folding" in r.describe()


def test_outputs_go_into_the_inputs_subject_hierarchy_folder(scene, tiny_model):
    """New output nodes join the study (or folder) that holds the fixed volume; a node the user
    gave for the output stays where the user put it."""
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    for node in (fixed, moving):
        sh.CreateItem(study, node)
    mine = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my Jacobian")
    sh.CreateItem(sh.GetSceneItemID(), mine)
    r = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, jacobian=mine)
    assert r.jacobian is mine and sh.GetItemParent(sh.GetItemByDataNode(mine)) == sh.GetSceneItemID()
    for node in (r.transform, r.quality_table, r.quality_map):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study, node.GetName()
    # Inputs at the scene's top: the outputs are left where Slicer puts them.
    other = slicer.vtkMRMLScene()
    f2, m2, _, _ = inprocess.sample_pair_nodes(other)
    r2 = inprocess.register_volume_nodes(other, f2, m2, model=tiny_model, refinement=None, quality=False)
    sh2 = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(other)
    assert sh2.GetItemByDataNode(r2.transform) == 0


def _linear_transform(scene, matrix_ras: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(mrml._vtk_matrix(matrix_ras))
    return node


def _rigid(angle_deg: float, shift_ras) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = shift_ras
    return m


def test_volumes_under_rigid_transforms_are_registered_in_world_coordinates(scene, tiny_model):
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    t_fixed = _linear_transform(scene, _rigid(8.0, (5.0, -3.0, 2.0)), "user fixed")
    t_moving = _linear_transform(scene, _rigid(-5.0, (-4.0, 6.0, 1.0)), "user moving")
    fixed.SetAndObserveTransformNodeID(t_fixed.GetID())
    moving.SetAndObserveTransformNodeID(t_moving.GetID())
    # What Slicer's own "Harden transform" makes of them: the reference geometry.
    logic = slicer.vtkSlicerTransformLogic()
    hardened = []
    for node in (fixed, moving):
        copy = mrml.add_volume_node(scene, mrml.image_from_volume_node(node, "copy"), "copy")
        copy.SetIJKToRASMatrix(mrml._vtk_matrix(mrml._ijk_to_ras(node)))  # the node's own geometry ...
        copy.SetAndObserveTransformNodeID(node.GetParentTransformNode().GetID())
        logic.hardenTransform(copy)  # ... then hardened
        hardened.append(copy)
    for node, copy in zip((fixed, moving), hardened):
        ours, theirs = mrml.image_from_volume_node(node, "ours"), mrml.image_from_volume_node(copy, "theirs")
        np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-9)
        np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-9)
    r = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model, refinement=None)
    ref = inprocess.register_volume_nodes(scene, *hardened, fpts, mpts, model=tiny_model, refinement=None,
                                     apply_to_moving=False)
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(r.transform),
                               slicer.util.arrayFromGridTransform(ref.transform), atol=1e-4)
    # The user's transforms are untouched; the result is not forced onto the moving volume.
    assert fixed.GetParentTransformNode() is t_fixed and moving.GetParentTransformNode() is t_moving
    assert t_moving.GetParentTransformNode() is None
    assert any("user moving" in w and "was kept" in w for w in r.warnings)
    # The Jacobian lies on the fixed volume's world geometry.
    np.testing.assert_allclose(mrml._ijk_to_ras(r.jacobian), mrml._ijk_to_ras(hardened[0]), atol=1e-6)


def test_non_rigid_parent_transforms_are_refused_with_nothing_made(scene, tiny_model):
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    scaled = _linear_transform(scene, np.diag([1.2, 1.0, 1.0, 1.0]), "scaled")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    mrml.set_grid_transform(grid, sitk.Image([4, 4, 4], sitk.sitkVectorFloat64, 3))
    for parent, match in ((scaled, "scales, shears or mirrors"), (grid, "non-linear transform 'warp'")):
        moving.SetAndObserveTransformNodeID(parent.GetID())
        count = scene.GetNumberOfNodes()
        with pytest.raises(InputError, match=match):
            inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None)
        assert scene.GetNumberOfNodes() == count
        assert moving.GetParentTransformNode() is parent


def test_registering_again_replaces_the_earlier_result(scene, tiny_model):
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    first = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None)
    assert moving.GetParentTransformNode() is first.transform
    second = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None)
    assert moving.GetParentTransformNode() is second.transform and not second.warnings
    # The second run saw the moving volume in its own coordinates, as the first did.
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(second.transform),
                               slicer.util.arrayFromGridTransform(first.transform), atol=1e-5)


def test_a_moving_volume_stored_another_way_gives_the_same_tre(scene):
    """Slicer logic with the bundled model: the exhale as a node stored NIfTI-like (flipped) and
    sagittally (permuted) gives the TRE of the original node (the network alone: what the nodes'
    geometry decides; the refined run on the same copies is the command line's test,
    test_register_command_gives_the_same_refined_tre_for_a_restored_moving)."""
    from conftest import EXACT_RESTORINGS

    from ProgressiveRegistrationLib.io.images import read_image
    from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    pair = simulate(read_image(BUNDLED_SAMPLE), seed=0)
    fixed = mrml.add_volume_node(scene, pair.inhale, "inhale")
    fpts = mrml.add_points_node(scene, pair.fixed_points_lps, "F")
    mpts = mrml.add_points_node(scene, pair.moving_points_lps, "M")
    tre = {}
    for how in ("as stored", "NIfTI-like diag(-1,-1,1)", "sagittal storage"):
        image = pair.exhale if how == "as stored" else EXACT_RESTORINGS[how](pair.exhale)
        moving = mrml.add_volume_node(scene, image, how)
        r = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, refinement=None, apply_to_moving=False,
                                            quality=False)
        tre[how] = r.tre_after_mm["mean"]
    for value in tre.values():
        assert abs(value - tre["as stored"]) < 0.01, tre
    assert tre["as stored"] < 2.6 < r.tre_before_mm["mean"]  # and the network does register


def test_the_jacobian_colours_keep_their_names_without_a_vtk_error(scene, vtk_errors):
    """SetNamesInitialised is needed up to Slicer 5.8 and logs an error from 5.10 on."""
    colors = mrml.jacobian_color_node(scene)
    assert colors.GetColorName(0) == "0.000" and colors.GetColorName(255) == "2.000"
    assert vtk_errors() == ""
    assert mrml.needs_names_initialised(colors) == (not hasattr(colors, "SetColorDefined"))
    if not mrml.needs_names_initialised(colors):  # this Slicer: the call the guard avoids is an error
        colors.SetNamesInitialised(True)
        assert "deprecated" in vtk_errors()


def test_a_resampled_moving_volume_on_request(scene, tiny_model, tmp_path):
    """In-process and through the background command: the moving volume on the fixed geometry."""
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "resampled")
    r = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, volume=volume,
                                   apply_to_moving=False)
    assert r.volume is volume
    np.testing.assert_allclose(mrml._ijk_to_ras(volume), mrml._ijk_to_ras(fixed), atol=1e-6)
    engine = register_images(mrml.image_from_volume_node(fixed, "f"), mrml.image_from_volume_node(moving, "m"),
                             load_model(tiny_model), refinement=None)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(volume), sitk.GetArrayFromImage(engine.warped), atol=1e-3)
    job = mrml.export_job(scene, fixed, moving, tmp_path)
    command = job.command(sys.executable, tiny_model, refine=False, warped=True)
    assert "--no-warped" not in command and "--no-overview" in command
    run = subprocess.run(command, cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    loaded = mrml.load_results(scene, job, apply_to_moving=False)
    assert loaded.volume is not None and loaded.volume is not volume
    np.testing.assert_allclose(slicer.util.arrayFromVolume(loaded.volume), slicer.util.arrayFromVolume(volume),
                               atol=1e-3)
    # Without the request, no volume and no warped file.
    assert inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None,
                                      apply_to_moving=False).volume is None
    assert "--no-warped" in job.command(sys.executable) and "--no-overview" not in job.command(sys.executable,
                                                                                              overview=True)


def test_the_quality_checks_and_the_doubt_map_come_with_the_in_process_result(scene, tiny_model):
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    r = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model, refinement=None)
    quality = r.summary["quality"]
    table = r.quality_table.GetTable()
    rows = {table.GetValue(i, 0).ToString(): table.GetValue(i, 3).ToString() for i in range(table.GetNumberOfRows())}
    assert rows == {**{c["label"]: c["verdict"] for c in quality["checks"]}, "overall": quality["overall"]}
    # Value and tolerance as the report shows them: the digits agree with the verdict.
    shown = {table.GetValue(i, 0).ToString(): (table.GetValue(i, 1).ToString(), table.GetValue(i, 2).ToString())
             for i in range(table.GetNumberOfRows())}
    assert all(shown[c["label"]] == (value_text(c), tolerance_text(c)) for c in quality["checks"])
    assert r.quality_table.GetAttribute("ProgressiveRegistration.overall") == quality["overall"]
    doubt = slicer.util.arrayFromVolume(r.quality_map)
    assert doubt.min() >= 0.0 and doubt.max() <= 2.0 and doubt.max() > 0.0
    again = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model, refinement=None,
                                       quality=False)
    assert again.quality_table is None and again.quality_map is None and "quality" not in again.summary


def test_a_moving_volume_with_a_narrower_field_of_view_gives_the_same_tre(scene):
    """Slicer logic with the bundled model: the exhale cut to 80 % of its width (same voxels, same
    world positions) registers as the whole one, on the landmarks inside both (refined, 0.3 mm)."""
    from ProgressiveRegistrationLib.io.images import read_image
    from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE
    from ProgressiveRegistrationLib.registration.refine_config import DEFAULT
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    pair = simulate(read_image(BUNDLED_SAMPLE), seed=1)
    n = pair.exhale.GetSize()[0]
    cut = sitk.RegionOfInterest(pair.exhale, [int(0.8 * n), *pair.exhale.GetSize()[1:]], [n - int(0.8 * n), 0, 0])
    inside = np.asarray([cut.TransformPhysicalPointToContinuousIndex(tuple(p))[0] >= -0.5
                         for p in pair.moving_points_lps])
    fixed = mrml.add_volume_node(scene, pair.inhale, "inhale")
    fpts = mrml.add_points_node(scene, pair.fixed_points_lps[inside], "F")
    mpts = mrml.add_points_node(scene, pair.moving_points_lps[inside], "M")
    tre = {}
    for name, image in (("whole", pair.exhale), ("cut", cut)):
        moving = mrml.add_volume_node(scene, image, name)
        r = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, refinement=DEFAULT, apply_to_moving=False)
        tre[name] = r.tre_after_mm["mean"]
    assert abs(tre["cut"] - tre["whole"]) < 0.3 and tre["whole"] < 1.0, tre


def _outputs_of(r) -> dict:
    """The output nodes of a result, by role (those it has)."""
    nodes = {"transform": r.transform, "Jacobian": r.jacobian, "TRE table": r.table, "resampled volume": r.volume,
             "quality table": r.quality_table, "doubt map": r.quality_map}
    return {what: node for what, node in nodes.items() if node is not None}


def _content(node):
    """A copy of what an output node holds: a field, a volume's voxels and geometry, a table's cells."""
    if node.IsA("vtkMRMLGridTransformNode"):
        return slicer.util.arrayFromGridTransform(node).copy()
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return slicer.util.arrayFromVolume(node).copy(), mrml._ijk_to_ras(node)
    table = node.GetTable()
    return [[table.GetValue(i, c).ToString() for c in range(table.GetNumberOfColumns())]
            for i in range(table.GetNumberOfRows())]


def _same_content(a, b) -> bool:
    if isinstance(a, list):
        return a == b
    if isinstance(a, tuple):
        return all(_same_content(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and np.array_equal(a, b)


def _log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == mrml.log.name]


def test_outputs_of_another_pair_are_kept_and_new_nodes_made(scene, tiny_model, caplog):
    """Pair A, then pair B given A's output nodes (as the panel gives its selected outputs): A's
    nodes keep A's results, B's go into new nodes, one log line per node says why."""
    from ProgressiveRegistrationLib.io.images import read_image
    from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    fixed_a, moving_a, fa, ma = inprocess.sample_pair_nodes(scene, seed=0)
    # Pair B: other volume nodes, a shallower breath (the seed alone changes only the landmarks).
    pair = simulate(read_image(BUNDLED_SAMPLE), seed=1, amplitude_si_mm=8.0, amplitude_ap_mm=3.0)
    fixed_b, moving_b = mrml.add_volume_node(scene, pair.inhale, "inhale"), mrml.add_volume_node(scene, pair.exhale,
                                                                                                "exhale")
    fb, mb = mrml.add_points_node(scene, pair.fixed_points_lps, "F"), mrml.add_points_node(scene,
                                                                                        pair.moving_points_lps, "M")
    a = inprocess.register_volume_nodes(scene, fixed_a, moving_a, fa, ma, model=tiny_model, refinement=None,
                                   resample=True)
    a_nodes = _outputs_of(a)
    assert len(a_nodes) == 6
    for what, node in a_nodes.items():  # every output records its pair
        assert mrml.pair_of(node) == (fixed_a.GetID(), moving_a.GetID()), what
        assert node.GetNodeReference(mrml.FIXED_REFERENCE) is fixed_a
        assert node.GetNodeReference(mrml.MOVING_REFERENCE) is moving_a
    # The transform's roles are Slicer's registration roles.
    assert mrml.FIXED_REFERENCE == a.transform.GetFixedNodeReferenceRole()
    assert mrml.MOVING_REFERENCE == a.transform.GetMovingNodeReferenceRole()
    before = {what: (node.GetName(), _content(node)) for what, node in a_nodes.items()}

    caplog.set_level("INFO", logger=mrml.log.name)
    b = inprocess.register_volume_nodes(scene, fixed_b, moving_b, fb, mb, model=tiny_model, refinement=None,
                                   transform=a.transform, jacobian=a.jacobian, table=a.table, volume=a.volume,
                                   quality_table=a.quality_table, quality_map=a.quality_map)
    b_nodes = _outputs_of(b)
    assert b_nodes.keys() == a_nodes.keys()
    for what, node in b_nodes.items():
        assert node is not a_nodes[what] and node.GetID() != a_nodes[what].GetID(), what
        assert mrml.pair_of(node) == (fixed_b.GetID(), moving_b.GetID()), what
        assert node.GetName().startswith(moving_b.GetName()), what
    # A's nodes hold A's results, under A's names; A's moving volume is still under A's transform.
    for what, node in a_nodes.items():
        name, content = before[what]
        assert node.GetName() == name and _same_content(_content(node), content), what
        assert mrml.pair_of(node) == (fixed_a.GetID(), moving_a.GetID()), what
    assert moving_a.GetParentTransformNode() is a.transform
    assert moving_b.GetParentTransformNode() is b.transform
    assert not _same_content(_content(b.transform), before["transform"][1])  # B's own field
    assert not _same_content(_content(b.table), before["TRE table"][1])
    # One line per node kept, naming it and the pair whose result it holds.
    lines = _log_lines(caplog)
    assert len(lines) == 6, lines
    for what, node in a_nodes.items():
        [line] = [text for text in lines if f"{what} '{node.GetName()}'" in text]
        held = line.split("holds the registration of ")[1].split(", so")[0]
        assert held == f"moving '{moving_a.GetName()}' to fixed '{fixed_a.GetName()}'", line
        assert line.endswith(f"for moving '{moving_b.GetName()}' to fixed '{fixed_b.GetName()}'."), line

    # The same pair again, with its own nodes: they are refilled, nothing is said.
    caplog.clear()
    count = scene.GetNumberOfNodes()
    again = inprocess.register_volume_nodes(scene, fixed_a, moving_a, fa, ma, model=tiny_model, refinement=None,
                                       transform=a.transform, jacobian=a.jacobian, table=a.table, volume=a.volume,
                                       quality_table=a.quality_table, quality_map=a.quality_map)
    assert all(_outputs_of(again)[what] is node for what, node in a_nodes.items())
    assert scene.GetNumberOfNodes() == count and not _log_lines(caplog)
    assert moving_a.GetParentTransformNode() is a.transform
    np.testing.assert_allclose(_content(a.transform), before["transform"][1], atol=1e-5)


def test_new_nodes_are_used_and_a_result_of_a_removed_volume_is_kept(scene, tiny_model, caplog):
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    mine = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "my transform")
    jacobian = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my Jacobian")
    assert mrml.pair_of(mine) is None and mrml.pair_of(jacobian) is None
    # A Jacobian of a scene saved before the outputs recorded their pair: a result, of a pair not known.
    older = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "older Jacobian")
    older.SetAttribute("ProgressiveRegistration.foldingPercent", "0.0")
    caplog.set_level("INFO", logger=mrml.log.name)
    assert mrml.pair_of(older) == (None, None) and mrml.own_output(older, fixed, moving, "Jacobian") is None
    assert _log_lines(caplog) == ["The Jacobian 'older Jacobian' holds the registration of volumes that are no "
                                  "longer known, so it is kept and a new node is made for moving 'exhale' to fixed "
                                  "'inhale'."]
    caplog.clear()
    r = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, quality=False,
                                   transform=mine, jacobian=jacobian)
    assert r.transform is mine and r.jacobian is jacobian and not _log_lines(caplog)
    assert mrml.pair_of(jacobian) == (fixed.GetID(), moving.GetID())
    assert moving.GetParentTransformNode() is mine

    # The first fixed volume is removed: its outputs still hold its result, for a pair no longer known.
    other = mrml.add_volume_node(scene, mrml.image_from_volume_node(fixed, "f"), "other fixed")
    scene.RemoveNode(fixed)
    assert mrml.pair_of(jacobian) == (None, moving.GetID())
    kept = slicer.util.arrayFromVolume(jacobian).copy()
    r = inprocess.register_volume_nodes(scene, other, moving, model=tiny_model, refinement=None, quality=False,
                                   transform=mine, jacobian=jacobian)
    assert r.transform is not mine and r.jacobian is not jacobian
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(jacobian), kept)
    # The result replaces the earlier result of this module as the moving volume's parent.
    assert moving.GetParentTransformNode() is r.transform
    assert any("'my Jacobian' holds the registration of moving 'exhale' to fixed a removed volume" in line
               for line in _log_lines(caplog)), _log_lines(caplog)


def test_the_panels_path_keeps_the_outputs_of_the_pair_with_the_roles_swapped(scene, tiny_model, tmp_path, caplog):
    """The background run's results (:func:`mrml.load_results`, what the panel calls with its
    selected outputs) for the same volumes as fixed and moving the other way round: another pair."""
    from ProgressiveRegistrationLib.registration.pipeline import register_files

    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    a = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, resample=True)
    a_nodes = _outputs_of(a)
    before = {what: _content(node) for what, node in a_nodes.items()}
    job = mrml.export_job(scene, moving, fixed, tmp_path)
    register_files(job.fixed_path, job.moving_path, job.out_dir, model=tiny_model, refinement=None,
                   write_overview=False)
    caplog.set_level("INFO", logger=mrml.log.name)
    b = mrml.load_results(scene, job, transform=a.transform, jacobian=a.jacobian, volume=a.volume,
                          quality_table=a.quality_table, quality_map=a.quality_map)
    b_nodes = _outputs_of(b)
    assert b_nodes.keys() == a_nodes.keys() and len(_log_lines(caplog)) == len(a_nodes)
    for what, node in a_nodes.items():
        assert b_nodes[what] is not node and mrml.pair_of(b_nodes[what]) == (moving.GetID(), fixed.GetID()), what
        assert _same_content(_content(node), before[what]), what
    assert moving.GetParentTransformNode() is a.transform and fixed.GetParentTransformNode() is b.transform


GUI_PATH = """
import os, subprocess, sys
import numpy as np
import SimpleITK as sitk
import slicer
from ProgressiveRegistrationLib.io.images import read_image
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE
from ProgressiveRegistrationLib.slicer import mrml, mrml4d

work, model = sys.argv[1], sys.argv[2]
os.makedirs(work + "/pair"), os.makedirs(work + "/4d")
scene = slicer.vtkMRMLScene()
image = read_image(BUNDLED_SAMPLE)
shifted = sitk.Image(image)
shifted.SetOrigin(tuple(np.add(image.GetOrigin(), (0.0, 0.0, 3.0))))
fixed, moving = mrml.add_volume_node(scene, image, "fixed"), mrml.add_volume_node(scene, shifted, "moving")
job = mrml.export_job(scene, fixed, moving, work + "/pair")
job4d = mrml4d.export_4d_job(scene, [fixed, moving], 0, work + "/4d")
r = subprocess.run(job.command(sys.executable, model, refine=False), capture_output=True, text=True)
assert r.returncode == 0, r.stderr
nodes = mrml.load_results(scene, job)
assert nodes.transform is not None and nodes.quality_table is not None
print("loaded", sorted(m for m in ("torch", "numba", "matplotlib") if m in sys.modules))
"""


def test_the_panels_export_and_loading_load_no_torch(tiny_model, tmp_path):
    """The panel's path in Slicer's process (export the inputs of a background run, pair and
    4DCT, then load its results) imports neither torch nor numba: they take seconds to load,
    with the GUI waiting. The run itself, in the child, uses them."""
    r = subprocess.run([sys.executable, "-c", GUI_PATH, str(tmp_path), tiny_model], cwd=MODULE_DIR,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert "loaded []" in r.stdout, r.stdout


# --- masks, an initial transform and DICOM registration objects --------------------------------

def _world_ras(node, points_ras: np.ndarray) -> np.ndarray:
    """Points through ``node``'s transform from world, as Slicer evaluates it."""
    import vtk

    general = vtk.vtkGeneralTransform()
    node.GetTransformFromWorld(general)
    return np.array([general.TransformPoint(*(float(v) for v in p)) for p in points_ras])


def _through_file(path, points_ras: np.ndarray) -> np.ndarray:
    """Points (RAS) through the ITK transform file at ``path`` (LPS), back in RAS."""
    from ProgressiveRegistrationLib.core.itk_fields import read_transform

    return transform_points(read_transform(path), points_ras * RAS) * RAS


def _grid_transform_node(scene, to_parent: bool):
    """A grid transform node with a smooth displacement field over the sample's extent."""
    import vtk
    from vtk.util import numpy_support

    size, spacing, origin = (12, 12, 12), (20.0, 20.0, 20.0), (-10.0, -70.0, -1450.0)  # over the sample (RAS)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    disp = np.stack([3 * np.sin(j / 3.0), 2 * np.cos(k / 4.0), 1.5 * np.sin(i / 5.0)], -1).reshape(-1, 3)
    image = vtk.vtkImageData()
    image.SetDimensions(*size)
    image.SetSpacing(*spacing)
    image.SetOrigin(*origin)
    array = numpy_support.numpy_to_vtk(disp, deep=True, array_type=vtk.VTK_DOUBLE)
    array.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(array)
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(image)
    grid.SetInterpolationModeToLinear()
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "grid")
    if to_parent:
        node.SetAndObserveTransformToParent(grid)
    else:
        node.SetAndObserveTransformFromParent(grid)
    return node, np.array(origin) + np.array(spacing) * (np.array(size) - 1) * np.array([[0.3], [0.7]])


def test_an_initial_transform_node_is_written_as_slicer_applies_it(scene, tmp_path):
    """Whatever the node: linear under a parent (the matrix), a grid of its own (Slicer's file),
    a grid stored in the other direction (sampled): the file maps points as Slicer's
    transform from world does. A transform the moving volume is already under is refused."""
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    rng = np.random.default_rng(0)
    lo, hi = (np.array(b) * RAS for b in mrml.grid_of_volume_node(fixed).bounding_box_lps())
    points = np.minimum(lo, hi) + rng.random((30, 3)) * np.abs(hi - lo) * 0.8 + np.abs(hi - lo) * 0.1
    parent = _linear_transform(scene, _rigid(10, (5.0, -3.0, 2.0)), "parent")
    child = _linear_transform(scene, _rigid(-4, (1.0, 8.0, -6.0)) @ np.diag([1.05, 1.0, 0.95, 1.0]), "child")
    child.SetAndObserveTransformNodeID(parent.GetID())
    for case, node, tolerance in (("linear chain", child, 1e-6), ("grid, FromParent", None, 1e-4),  # stored as float32
                                  ("grid, ToParent", None, 0.02)):
        if node is None:
            node, box = _grid_transform_node(scene, to_parent=case.endswith("ToParent"))
            points_in = box[0] + rng.random((30, 3)) * (box[1] - box[0])
        else:
            points_in = points
        folder = tmp_path / case.replace(" ", "_").replace(",", "")
        folder.mkdir()
        path = mrml.write_initial_transform(scene, node, fixed, moving, folder)
        assert path.endswith({"linear chain": ".tfm", "grid, FromParent": ".h5", "grid, ToParent": ".nrrd"}[case])
        np.testing.assert_allclose(_through_file(path, points_in), _world_ras(node, points_in), atol=tolerance,
                                   err_msg=case)
    moving.SetAndObserveTransformNodeID(child.GetID())
    with pytest.raises(InputError, match="already under it"):
        mrml.write_initial_transform(scene, parent, fixed, moving, tmp_path)


def test_the_panels_path_passes_masks_and_an_initial_transform(scene, tiny_model, tmp_path):
    """A moving volume shifted in the scene, the transform that aligns it back as the initial
    transform, lung masks as a label map and a segmentation: the run's transform node carries
    the fixed landmarks to the shifted moving ones as a plain run does to the unshifted ones."""
    from ProgressiveRegistrationLib.core.lungs import lung_mask
    from ProgressiveRegistrationLib.slicer import mrml4d

    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
    plain = inprocess.register_volume_nodes(scene, fixed, moving, fpts, mpts, model=tiny_model, refinement=None,
                                            quality=False, apply_to_moving=False)
    shift = np.array([100.0, 50.0, 20.0])
    image = mrml.image_from_volume_node(moving, "moving")
    image.SetOrigin(tuple(np.asarray(image.GetOrigin()) + shift * RAS))
    shifted = mrml.add_volume_node(scene, image, "shifted")
    shifted_points = mrml.add_points_node(scene, slicer.util.arrayFromMarkupsControlPoints(mpts) * RAS + shift * RAS,
                                          "M shifted")
    back = _linear_transform(scene, _rigid(0, -shift), "back")
    fixed_mask = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "fixed lungs")
    mrml.set_volume_from_image(fixed_mask, lung_mask(mrml.image_from_volume_node(fixed, "f")))
    moving_labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "moving lungs")
    mrml.set_volume_from_image(moving_labels, lung_mask(image))
    moving_mask = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving lungs")
    ids = mrml.string_array(["lungs"])
    assert mrml4d.segmentations_logic(scene).ImportLabelmapToSegmentationNode(moving_labels, moving_mask, ids)
    job = mrml.export_job(scene, fixed, shifted, tmp_path, fpts, shifted_points, fixed_mask, moving_mask, back)
    command = job.command(sys.executable, tiny_model, refine=False)
    for option in ("--fixed-mask", "--moving-mask", "--initial-transform"):
        assert command[command.index(option) + 1] == getattr(job, option[2:].replace("-", "_") + "_path")
    written = sitk.ReadImage(job.moving_mask_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written) > 0, sitk.GetArrayFromImage(lung_mask(image)) > 0)
    run = subprocess.run(command, cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    loaded = mrml.load_results(scene, job, apply_to_moving=False)
    moved_tre = _tre_through_node(loaded.transform, fpts, shifted_points)
    assert abs(moved_tre.mean() - _tre_through_node(plain.transform, fpts, mpts).mean()) < 0.3
    recorded = loaded.summary["inputs"]["initial_transform"]  # the report records the file with its SHA-256
    assert recorded["path"].endswith("initial.tfm") and len(recorded["sha256"]) == 64
    # In-process, with the same nodes: the same transform as the background run.
    direct = inprocess.register_volume_nodes(scene, fixed, shifted, fpts, shifted_points, model=tiny_model,
                                             refinement=None, quality=False, apply_to_moving=False,
                                             fixed_mask=fixed_mask, moving_mask=moving_mask, initial_transform=back)
    np.testing.assert_allclose(_tre_through_node(direct.transform, fpts, shifted_points), moved_tre, atol=0.01)


def test_a_dicom_registration_object_of_a_result(scene, tiny_model, tmp_path):
    """Volumes loaded from DICOM (their instance UIDs, as Slicer's DICOM plugin sets them): the
    exported object is valid by dciodvfy and holds the transform node's field; volumes not
    from DICOM, or under another transform, are refused."""
    import pydicom
    from conftest import dicom_errors, write_ct_series

    from ProgressiveRegistrationLib.io.dicom_reg import read_registration_grid

    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    files = {}
    for role, node, study in (("fixed", fixed, "1.2.826.7.1"), ("moving", moving, "1.2.826.7.2")):
        uids = write_ct_series(mrml.image_from_volume_node(node, role), tmp_path / role, study, f"{study}.1",
                               f"{study}.9")
        files.update({uid: str(tmp_path / role / f"{z:04d}.dcm") for z, uid in enumerate(uids)})
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
    r = inprocess.register_volume_nodes(scene, fixed, moving, model=tiny_model, refinement=None, quality=False)
    path = tmp_path / "registration.dcm"
    mrml.export_dicom_registration(scene, r.transform, path, files.get)
    assert dicom_errors(path) == []
    grid, registered, source = read_registration_grid(path)
    assert (registered, source) == ("1.2.826.7.1.9", "1.2.826.7.2.9")
    node_field = mrml.displacement_of_grid_transform(r.transform)
    np.testing.assert_allclose(sitk.GetArrayFromImage(grid), sitk.GetArrayFromImage(node_field), atol=1e-4)
    assert np.allclose(grid.GetOrigin(), node_field.GetOrigin()) and np.allclose(grid.GetDirection(),
                                                                                 node_field.GetDirection())
    assert pydicom.dcmread(path).PatientID == "P1"
    moving.RemoveAttribute("DICOM.instanceUIDs")
    with pytest.raises(InputError, match="not loaded from the DICOM database"):
        mrml.export_dicom_registration(scene, r.transform, tmp_path / "no.dcm", files.get)
    fixed.SetAndObserveTransformNodeID(_linear_transform(scene, _rigid(5, (1.0, 0, 0)), "t").GetID())
    with pytest.raises(InputError, match="relates the series as stored"):
        mrml.export_dicom_registration(scene, r.transform, tmp_path / "no.dcm", files.get)
    assert not (tmp_path / "no.dcm").exists()
