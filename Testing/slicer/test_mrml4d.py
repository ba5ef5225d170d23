"""The 4DCT side of the module on real MRML nodes (slicer-core): a Sequence of phases in;
sequences of transforms and ventilation maps, a phase table, trajectories and a carried
segmentation out, indexed and named as the input Sequence, with nothing temporary left."""

from __future__ import annotations

import csv
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR, run_process

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from ProgressiveRegistrationLib.core.errors import InputError  # noqa: E402
from ProgressiveRegistrationLib.core.itk_fields import field_transform  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402
from ProgressiveRegistrationLib.simulation.phantom import generate  # noqa: E402
from ProgressiveRegistrationLib.slicer import inprocess, mrml, mrml4d  # noqa: E402

RAS = np.array([-1.0, -1.0, 1.0])
#: Index values of the test 4DCT: breathing phase in percent, not 0, 1, 2.
PERCENT = ("0", "50", "90")
#: Two segments with IDs, names and colours of their own.
SEGMENTS = (("tumourID", "Tumour", (0.9, 0.2, 0.1)), ("airwayID", "Airway", (0.1, 0.4, 0.95)))


@pytest.fixture(scope="module")
def images():
    ph = generate(3, (64, 56, 48), (3.0, 3.0, 3.5))
    phases = [ph.image] + [simulate(ph.image, seed=k, amplitude_si_mm=a).exhale for k, a in ((1, 8.0), (2, 16.0))]
    lung = sitk.GetArrayFromImage(ph.image) < -700
    labels = np.zeros(lung.shape, np.uint8)
    labels[lung] = 1
    labels[:, :28][lung[:, :28]] = 2  # a second label in half of the lung
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ph.image)
    return phases, image


def _sequence(scene, phases, values=PERCENT, unit="%", text=False, name="4DCT"):
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    seq.SetIndexName("phase")
    seq.SetIndexUnit(unit)
    seq.SetIndexType(seq.TextIndex if text else seq.NumericIndex)
    for k, image in enumerate(phases):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"p{k}")
        mrml.set_volume_from_image(volume, image)
        seq.SetDataNodeAtValue(volume, values[k])
    return seq


def _segmentation(scene, labels):
    """A segmentation node with SEGMENTS (label value i + 1 is the i-th), without temporary nodes."""
    import vtk

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    mrml.set_volume_from_image(labelmap, labels)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour")
    ids = vtk.vtkStringArray()
    for segment_id, _, _ in SEGMENTS:
        ids.InsertNextValue(segment_id)
    assert mrml4d.segmentations_logic(scene).ImportLabelmapToSegmentationNode(labelmap, node, ids)
    for segment_id, name, color in SEGMENTS:
        node.GetSegmentation().GetSegment(segment_id).SetName(name)
        node.GetSegmentation().GetSegment(segment_id).SetColor(*color)
    scene.RemoveNode(labelmap)
    return node


def _labels_of(scene, segmentation, reference_volume) -> np.ndarray:
    return sitk.GetArrayFromImage(mrml4d.labels_of_node(scene, segmentation, reference_volume, "s"))


def _nodes(scene) -> dict:
    return {scene.GetNthNode(i).GetID(): scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())}


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def run(images, tiny_model, tmp_path_factory):
    """One in-process registration of a 3-phase Sequence (index 0, 50, 90 %) with points and a
    two-segment segmentation, and the same run by the command line, for reference values."""
    phases, labels = images
    scene = slicer.vtkMRMLScene()
    seq = _sequence(scene, phases)
    seg = _segmentation(scene, labels)
    points = mrml.add_points_node(scene, np.array([[-10.0, 5.0, 20.0], [15.0, -12.0, 40.0]]), "target")
    for i, label in enumerate(("tumour centre", "carina")):
        points.SetNthControlPointLabel(i, label)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "4DCT study")
    sh.CreateItem(study, seq)
    voxels_before = [slicer.util.arrayFromVolume(seq.GetNthDataNode(k)).copy() for k in range(3)]
    before = _nodes(scene)
    r = inprocess.register_sequence_nodes(scene, seq, reference=1, points=points, segmentation=seg,
                                       segmentation_phase=0, target_phase=2, model=tiny_model, refinement=None)
    work = tmp_path_factory.mktemp("cli")
    job = mrml4d.export_4d_job(scene, seq, 1, work, points=points, segmentation=seg, segmentation_phase=0,
                               target_phase=2)
    cli = run_process(job.command(sys.executable, tiny_model, refine=False), cwd=MODULE_DIR, capture_output=True,
                         text=True, encoding="utf-8")
    assert cli.returncode == 0, cli.stderr
    return SimpleNamespace(scene=scene, seq=seq, seg=seg, points=points, result=r, job=job, phases=phases,
                           voxels_before=voxels_before, before=before, model=tiny_model, study=study)


def test_sequence_in_nodes_out(run):
    scene, seq, r, job = run.scene, run.seq, run.result, run.job
    # The user's nodes are untouched.
    assert seq.GetNumberOfDataNodes() == 3
    for k in range(3):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(seq.GetNthDataNode(k)), run.voxels_before[k])
    assert r.transforms.GetNumberOfDataNodes() == r.ventilation.GetNumberOfDataNodes() == 3
    assert r.transforms.GetNodeReference(mrml4d.SOURCE_REFERENCE) is seq
    # Phase 2's grid transform (index value 90) is the file's φ, in RAS (Slicer's FromParent: reference -> phase).
    phi = field_transform(sitk.ReadImage(f"{job.out_dir}/phase_2/transform.nrrd"))
    node = r.transforms.GetDataNodeAtValue("90")
    ref = run.phases[1]
    for ijk in ((20, 20, 15), (32, 28, 24), (40, 30, 30)):
        lps = np.array(ref.TransformContinuousIndexToPhysicalPoint(ijk))
        ras = np.array(node.GetTransformFromParent().TransformPoint((lps * RAS).tolist()))
        np.testing.assert_allclose(ras * RAS, phi.TransformPoint(lps.tolist()), atol=0.05)
    # The table is phases.csv, and the phases are named as the Sequence names them.
    with open(f"{job.out_dir}/phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == ["0 %", "50 %", "90 %"]
    table = r.table.GetTable()
    column = table.GetColumnByName("volume_change_percent")
    assert [column.GetValue(k) for k in range(3)] == pytest.approx([float(row["volume_change_percent"]) for row in rows])
    assert [table.GetColumnByName("name").GetValue(k) for k in range(3)] == ["0 %", "50 %", "90 %"]
    # The ventilation volumes hold the maps' voxels.
    vent = sitk.ReadImage(f"{job.out_dir}/phase_0/ventilation_jacobian.nrrd")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(r.ventilation.GetDataNodeAtValue("0")),
                               sitk.GetArrayFromImage(vent), atol=1e-6)
    # The browser steps through the phases: its proxy of the current phase sits under the current transform.
    proxy = r.browser.GetProxyNode(seq)
    assert proxy is not None and proxy.GetParentTransformNode() is r.browser.GetProxyNode(r.transforms)
    # And the background path's loader gives the same numbers from that folder.
    loaded = mrml4d.load_4d_results(scene, job)
    assert _without_time(loaded.summary["phases"]) == _without_time(r.summary["phases"])
    assert "against 50 %" in loaded.describe()


def test_the_outputs_join_the_sequences_study(run):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(run.scene)
    r = run.result
    for node in (r.transforms, r.ventilation, r.table, r.segmentation):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == run.study, node.GetName()
    assert sh.GetItemParent(sh.GetItemByDataNode(r.browser)) != run.study  # where Slicer's Sequences module puts it


def test_outputs_are_indexed_as_the_source_so_the_browser_shows_one_phase(run):
    """A browser matches synchronized sequences by index value: at every step, the source's
    proxy, the transform and the ventilation map are of the same phase."""
    r, seq = run.result, run.seq
    for out in (r.transforms, r.ventilation, r.ventilation_hu, r.points):
        assert [out.GetNthIndexValue(k) for k in range(3)] == list(PERCENT)
        assert (out.GetIndexName(), out.GetIndexUnit(), out.GetIndexType()) == ("phase", "%", seq.NumericIndex)
    logic = mrml4d._sequences_logic(run.scene)
    for item in range(3):
        r.browser.SetSelectedItemNumber(item)
        logic.UpdateProxyNodesFromSequences(r.browser)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(r.browser.GetProxyNode(seq)),
                                      run.voxels_before[item])
        expected = sitk.GetArrayFromImage(sitk.ReadImage(f"{run.job.out_dir}/phase_{item}/ventilation_jacobian.nrrd"))
        np.testing.assert_allclose(slicer.util.arrayFromVolume(r.browser.GetProxyNode(r.ventilation)), expected,
                                   atol=1e-6)
        points = r.browser.GetProxyNode(r.points)
        assert points.GetNumberOfControlPoints() == 2
    r.browser.SetSelectedItemNumber(0)
    logic.UpdateProxyNodesFromSequences(r.browser)


def test_a_text_indexed_sequence_names_and_indexes_the_outputs(run, tmp_path):
    """T00, T50, T90 (a text index): the outputs have these values and the table these names."""
    scene = run.scene
    text = _sequence(scene, run.phases, values=("T00", "T50", "T90"), unit="", text=True, name="4DCT text")
    job = mrml4d.export_4d_job(scene, text, 1, tmp_path)
    assert job.names == ["T00", "T50", "T90"]
    job.out_dir = run.job.out_dir  # the same registration's files
    r = mrml4d.load_4d_results(scene, job)
    assert [r.transforms.GetNthIndexValue(k) for k in range(3)] == ["T00", "T50", "T90"]
    assert r.transforms.GetIndexType() == text.TextIndex
    r.browser.SetSelectedItemNumber(2)
    mrml4d._sequences_logic(scene).UpdateProxyNodesFromSequences(r.browser)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(r.browser.GetProxyNode(text)), run.voxels_before[2])


def test_phase_names_as_the_sequence_names_them():
    from ProgressiveRegistrationLib.slicer.jobs import phase_label

    assert phase_label("50", "%", "phase") == "50 %"
    assert phase_label("0.4", "s", "time") == "0.4 s"
    assert phase_label("T50", "", "phase") == "T50"
    assert phase_label("3", "", "phase") == "phase 3"  # a bare number is not read as a position
    assert phase_label("3", "", "") == "3"


def test_the_carried_segmentation_keeps_ids_names_and_colours(run):
    scene, r, seq, job = run.scene, run.result, run.seq, run.job
    assert r.segmentation.GetName() == "tumour (90 %)"
    segmentation = r.segmentation.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
        [s[0] for s in SEGMENTS]
    for segment_id, name, color in SEGMENTS:
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-6)
    # Its voxels are the command line's label map, label for label.
    carried = _labels_of(scene, r.segmentation, seq.GetNthDataNode(2))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(f"{job.out_dir}/phase_2/segmentation.nrrd"))
    assert carried.shape == expected.shape and (carried != expected).mean() < 1e-3
    assert set(np.unique(expected)) == {0, 1, 2}


def test_no_temporary_node_stays_in_the_scene(run, images):
    """Exports and imports made label maps with display nodes and colour tables of their own."""
    scene = run.scene
    before = _nodes(scene)
    labels = mrml4d.labels_of_node(scene, run.seg, run.seq.GetNthDataNode(0), "s")
    assert sitk.GetArrayFromImage(labels).max() == 2
    assert set(_nodes(scene)) == set(before)
    # The registration itself added outputs, their display nodes and colour map only.
    fresh = slicer.vtkMRMLScene()
    seq = _sequence(fresh, images[0][:2])
    seg = _segmentation(fresh, images[1])
    start = _nodes(fresh)
    r = inprocess.register_sequence_nodes(fresh, seq, reference=0, segmentation=seg, model=run.model, refinement=None)
    added = [n for i, n in _nodes(fresh).items() if i not in start]
    classes = sorted(n.GetClassName() for n in added)
    assert "vtkMRMLLabelMapVolumeNode" not in classes and "vtkMRMLLabelMapVolumeDisplayNode" not in classes
    colors = [n.GetName() for n in added if n.IsA("vtkMRMLColorNode")]
    assert colors == [mrml4d.VENTILATION_COLORS]
    assert r.segmentation in added
    # The user's segmentation got no display node from the export either.
    assert seg.GetDisplayNode() is None or seg.GetDisplayNode().GetID() in start


def test_points_to_follow_come_out_as_a_table_and_a_point_list_per_phase(run):
    r, job = run.result, run.job
    with open(f"{job.out_dir}/trajectories.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = r.trajectories.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(mrml4d.TRAJECTORY_COLUMNS)
    assert table.GetNumberOfRows() == len(rows) == 2 * 3
    for i, row in enumerate(rows):
        assert table.GetValue(i, 0).ToString() == row["label"] and table.GetValue(i, 1).ToString() == row["name"]
        ras = [table.GetValue(i, c).ToDouble() for c in (2, 3, 4)]
        np.testing.assert_allclose(ras, np.array([float(row[k]) for k in ("l", "p", "s")]) * RAS, atol=1e-6)
    # One point list per phase, at the Sequence's index values, holding each point where it is then.
    assert r.points.GetNumberOfDataNodes() == 3
    for k, value in enumerate(PERCENT):
        node = r.points.GetDataNodeAtValue(value)
        got = slicer.util.arrayFromMarkupsControlPoints(node)
        want = np.array([[float(row[c]) for c in ("l", "p", "s")] for row in rows if int(row["phase"]) == k]) * RAS
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert [node.GetNthControlPointLabel(i) for i in range(2)] == ["tumour centre", "carina"]
    # The reference phase holds the points themselves.
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(r.points.GetDataNodeAtValue("50")),
                               slicer.util.arrayFromMarkupsControlPoints(run.points), atol=1e-3)


def test_the_ventilation_maps_are_shown_with_their_colour_map(run):
    r = run.result
    colors = run.scene.GetFirstNodeByName(mrml4d.VENTILATION_COLORS)
    for seq in (r.ventilation, r.ventilation_hu):
        display = r.browser.GetProxyNode(seq).GetDisplayNode()
        assert display.GetColorNodeID() == colors.GetID()
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx(mrml4d.VENTILATION_RANGE)
    rgba = [0.0] * 4
    colors.GetColor(0, rgba)
    assert rgba[2] == 1.0 and rgba[0] < 0.1  # blue: the phase's lung smaller than the reference's
    colors.GetColor(255, rgba)
    assert rgba[0] == 1.0 and rgba[2] < 0.1  # red: larger
    colors.GetColor(128, rgba)
    assert rgba[3] == 0.0  # transparent at 0 (outside the lungs): a foreground layer over the CT
    assert colors.GetColorName(255) == "+0.500"


def test_registering_the_same_sequence_again_refills_its_outputs(run):
    scene, r = run.scene, run.result
    count = scene.GetNumberOfNodes()
    again = mrml4d.load_4d_results(scene, run.job)
    assert scene.GetNumberOfNodes() == count
    for name in ("transforms", "ventilation", "ventilation_hu", "table", "browser", "segmentation", "trajectories",
                 "points"):
        assert getattr(again, name) is getattr(r, name), name
    assert again.transforms.GetNumberOfDataNodes() == 3


def test_a_list_of_volumes_is_a_sequence_too(images, tiny_model):
    phases, _ = images
    scene = slicer.vtkMRMLScene()
    nodes = [mrml.add_volume_node(scene, image, f"v{k}") for k, image in enumerate(phases[:2])]
    r = inprocess.register_sequence_nodes(scene, nodes, reference=0, model=tiny_model, refinement=None)
    assert r.transforms.GetNumberOfDataNodes() == 2 and r.summary["names"] == ["v0", "v1"]
    assert r.table.GetTable().GetNumberOfRows() == 2
    assert r.trajectories is None and r.points is None


def test_bad_input_leaves_the_scene_as_it_was(images, tiny_model):
    phases, labels = images
    scene = slicer.vtkMRMLScene()
    seq = _sequence(scene, phases)
    one = _sequence(scene, phases[:1], name="one")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    count = scene.GetNumberOfNodes()
    for source, kwargs, message in ((one, {}, "at least two"), (seq, {"reference": 3}, "out of range"),
                                    (None, {}, "select the phases"), (seq, {"segmentation": empty}, "no visible segment")):
        with pytest.raises(InputError, match=message):
            inprocess.register_sequence_nodes(scene, source, model=tiny_model, refinement=None, **kwargs)
        assert scene.GetNumberOfNodes() == count
