"""The 4DCT side of the module on real MRML nodes (slicer-core): a Sequence of phases in;
sequences of transforms and ventilation maps, a phase table and a carried segmentation out."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")

from ProgressiveRegistrationLib.core.errors import InputError  # noqa: E402
from ProgressiveRegistrationLib.core.transforms import field_transform  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402
from ProgressiveRegistrationLib.simulation.phantom import generate  # noqa: E402
from ProgressiveRegistrationLib.slicer import mrml, mrml4d  # noqa: E402

RAS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def images():
    ph = generate(3, (64, 56, 48), (3.0, 3.0, 3.5))
    phases = [ph.image] + [simulate(ph.image, seed=k, amplitude_si_mm=a).exhale for k, a in ((1, 8.0), (2, 16.0))]
    labels = sitk.Cast(sitk.BinaryThreshold(ph.image, -900, -700, 1, 0), sitk.sitkUInt8)
    return phases, labels


def _sequence(scene, phases):
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "4DCT")
    for k, image in enumerate(phases):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"p{k}")
        mrml.set_volume_from_image(volume, image)
        seq.SetDataNodeAtValue(volume, str(k))
    return seq


def _segmentation(scene, labels):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    mrml.set_volume_from_image(labelmap, labels)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    return node


def _labels_of(scene, segmentation, reference_volume) -> np.ndarray:
    return sitk.GetArrayFromImage(mrml4d.labels_of_node(scene, segmentation, reference_volume, "s")) > 0


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_sequence_in_nodes_out(images, tiny_model, tmp_path):
    phases, labels = images
    scene = slicer.vtkMRMLScene()
    seq = _sequence(scene, phases)
    seg = _segmentation(scene, labels)
    voxels_before = [slicer.util.arrayFromVolume(seq.GetNthDataNode(k)).copy() for k in range(3)]
    r = mrml4d.register_sequence_nodes(scene, seq, reference=1, segmentation=seg, segmentation_phase=0,
                                       target_phase=2, model=tiny_model, refinement=None)
    # The user's nodes are untouched.
    assert seq.GetNumberOfDataNodes() == 3
    for k in range(3):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(seq.GetNthDataNode(k)), voxels_before[k])
    assert r.transforms.GetNumberOfDataNodes() == r.ventilation.GetNumberOfDataNodes() == 3
    assert r.transforms.GetNodeReference(mrml4d.SOURCE_REFERENCE) is seq
    # The same run by the command line, for reference values.
    work = tmp_path / "cli"
    job = mrml4d.export_4d_job(scene, seq, 1, work.mkdir() or work, segmentation=seg, segmentation_phase=0,
                               target_phase=2)
    cmd = job.command(sys.executable, tiny_model, refine=False)
    run = subprocess.run(cmd, cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert run.returncode == 0, run.stderr
    # Phase 2's grid transform is the file's φ, in RAS (Slicer's FromParent: reference -> phase).
    phi = field_transform(sitk.ReadImage(f"{job.out_dir}/phase_2/transform.nrrd"))
    node = r.transforms.GetDataNodeAtValue("2")
    ref = phases[1]
    for ijk in ((20, 20, 15), (32, 28, 24), (40, 30, 30)):
        lps = np.array(ref.TransformContinuousIndexToPhysicalPoint(ijk))
        ras = np.array(node.GetTransformFromParent().TransformPoint((lps * RAS).tolist()))
        np.testing.assert_allclose(ras * RAS, phi.TransformPoint(lps.tolist()), atol=0.05)
    # The table is phases.csv.
    with open(f"{job.out_dir}/phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = r.table.GetTable()
    column = table.GetColumnByName("volume_change_percent")
    assert [column.GetValue(k) for k in range(3)] == pytest.approx([float(row["volume_change_percent"]) for row in rows])
    # The ventilation volumes hold the maps' voxels.
    vent = sitk.ReadImage(f"{job.out_dir}/phase_0/ventilation_jacobian.nrrd")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(r.ventilation.GetDataNodeAtValue("0")),
                               sitk.GetArrayFromImage(vent), atol=1e-6)
    # The segmentation carried to phase 2 is the command line's.
    assert r.segmentation.GetName() == "tumour (phase 2)"
    carried = _labels_of(scene, r.segmentation, seq.GetNthDataNode(2))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(f"{job.out_dir}/phase_2/segmentation.nrrd")) > 0
    assert carried.shape == expected.shape and (carried != expected).mean() < 1e-3
    # The browser steps through the phases: its proxy of the current phase sits under the current transform.
    proxy = r.browser.GetProxyNode(seq)
    assert proxy is not None and proxy.GetParentTransformNode() is r.browser.GetProxyNode(r.transforms)
    # And the background path's loader gives the same nodes from that folder.
    loaded = mrml4d.load_4d_results(scene, job)
    assert _without_time(loaded.summary["phases"]) == _without_time(r.summary["phases"])
    assert [row["name"] for row in rows] == ["4DCT [0]", "4DCT [1]", "4DCT [2]"]


def test_a_list_of_volumes_is_a_sequence_too(images, tiny_model):
    phases, _ = images
    scene = slicer.vtkMRMLScene()
    nodes = [mrml.add_volume_node(scene, image, f"v{k}") for k, image in enumerate(phases[:2])]
    r = mrml4d.register_sequence_nodes(scene, nodes, reference=0, model=tiny_model, refinement=None)
    assert r.transforms.GetNumberOfDataNodes() == 2 and r.summary["names"] == ["v0", "v1"]
    assert r.table.GetTable().GetNumberOfRows() == 2


def test_bad_input_leaves_the_scene_as_it_was(images, tiny_model):
    phases, labels = images
    scene = slicer.vtkMRMLScene()
    seq = _sequence(scene, phases)
    one = _sequence(scene, phases[:1])
    count = scene.GetNumberOfNodes()
    for source, kwargs, message in ((one, {}, "at least two"), (seq, {"reference": 3}, "out of range"),
                                    (None, {}, "select the phases")):
        with pytest.raises(InputError, match=message):
            mrml4d.register_sequence_nodes(scene, source, model=tiny_model, refinement=None, **kwargs)
        assert scene.GetNumberOfNodes() == count
