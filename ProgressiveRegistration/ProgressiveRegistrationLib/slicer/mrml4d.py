"""The 4DCT side of the module, Qt-free: every function takes the scene as a parameter.

Input: a Sequence of scalar volumes (Slicer's container for a 4DCT, what loading a 4DCT
DICOM series gives) or a list of volume nodes, one per breathing phase, and the index of
the reference phase; optionally points of the reference phase and a segmentation of one
phase. Work: ``progreg register-4d`` (:func:`pipeline.register_4d_files`), in a background
process (:func:`export_4d_job`, then :func:`load_4d_results`) or in-process
(:func:`register_sequence_nodes`). Outputs, all referring to the input by node reference:

* a Sequence of grid transforms (phase k: reference → phase k, Slicer's FromParent
  direction) and Sequences of the Jacobian and HU ventilation maps, with a Sequence
  browser that steps through them together;
* a table with one row per phase (lung volume change, displacement, folding, seconds);
* the segmentation carried to the chosen phase, as a new segmentation node.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..core.errors import InputError
from ..core.transforms import read_displacement_field
from ..io.images import read_image
from ..io.landmarks import write_markups_json
from ..io.resources import BUNDLED_SAMPLE
from ..model.modelfile import Model
from ..registration.pipeline import register_4d_files
from ..registration.refine import DEFAULT as DEFAULT_REFINEMENT
from ..registration.refine import RefineConfig
from ..simulation.breathing import simulate
from .mrml import image_from_volume_node, markups_lps, set_grid_transform, set_volume_from_image

SOURCE_REFERENCE = "ProgressiveRegistration.phases"


def phase_nodes(source) -> list:
    """The volume nodes of a Sequence (its data nodes) or of a list of volume nodes."""
    if source is None:
        raise InputError("select the phases: a Sequence of volumes, or several volumes")
    if isinstance(source, (list, tuple)):
        nodes = list(source)
    elif source.IsA("vtkMRMLSequenceNode"):
        nodes = [source.GetNthDataNode(i) for i in range(source.GetNumberOfDataNodes())]
    else:
        raise InputError(f"'{source.GetName()}' is neither a Sequence nor a list of volumes")
    for node in nodes:
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError("every phase must be a scalar volume")
    return nodes


def _phase_name(source, k: int, node) -> str:
    if isinstance(source, (list, tuple)):
        return node.GetName() or f"phase {k}"
    return f"{source.GetName()} [{source.GetNthIndexValue(k)}]"


def labels_of_node(scene, node, reference_volume, what: str) -> sitk.Image:
    """A label map (LPS, on ``reference_volume``'s geometry) of a labelmap volume node or of
    a segmentation node's visible segments (exported through the Segmentations logic)."""
    import slicer

    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return image_from_volume_node(node, what)
    if not node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{what}: a segmentation or labelmap volume is needed")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("export"))
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(node, labelmap,
                                                                                             reference_volume):
            raise InputError(f"{what}: could not be exported as a label map")
        return image_from_volume_node(labelmap, what)
    finally:
        scene.RemoveNode(labelmap)


@dataclass
class Job4D:
    """The files of a background ``progreg register-4d`` run and what to make of its results."""

    source_id: str | None
    phase_paths: list[str]
    names: list[str]
    reference: int
    out_dir: str
    points_path: str | None = None
    segmentation_path: str | None = None
    segmentation_phase: int | None = None
    target_phase: int | None = None
    segmentation_name: str = "segmentation"

    def command(self, python: str, model: str | None = None, device: str = "cpu", refine: bool = True) -> list[str]:
        args = [python, "-m", "ProgressiveRegistrationLib", "register-4d", *self.phase_paths, "--reference",
                str(self.reference), "--out", self.out_dir, "--device", device, "--progress-json",
                "--names", *self.names]
        if self.points_path:
            args += ["--points", self.points_path]
        if self.segmentation_path:
            args += ["--segmentation", self.segmentation_path, "--segmentation-phase", str(self.segmentation_phase)]
        if model:
            args += ["--model", str(model)]
        if not refine:
            args.append("--no-refine")
        return args


def export_4d_job(scene, source, reference: int, work_dir, points=None, segmentation=None,
                  segmentation_phase: int | None = None, target_phase: int | None = None) -> Job4D:
    """Write the inputs of a background ``progreg register-4d`` run into ``work_dir``."""
    nodes = phase_nodes(source)
    if len(nodes) < 2:
        raise InputError(f"register all phases: {len(nodes)} phase given, at least two are needed")
    if not 0 <= reference < len(nodes):
        raise InputError(f"reference phase {reference}: out of range (phases 0 to {len(nodes) - 1})")
    seg_phase = reference if segmentation_phase is None else segmentation_phase
    target = reference if target_phase is None else target_phase
    for value, what in ((seg_phase, "segmentation phase"), (target, "target phase")):
        if segmentation is not None and not 0 <= value < len(nodes):
            raise InputError(f"{what} {value}: out of range (phases 0 to {len(nodes) - 1})")
    work = Path(work_dir)
    names = [_phase_name(source, k, n) for k, n in enumerate(nodes)]
    images = [image_from_volume_node(n, names[k]) for k, n in enumerate(nodes)]
    labels = None
    if segmentation is not None:
        labels = labels_of_node(scene, segmentation, nodes[seg_phase], f"segmentation '{segmentation.GetName()}'")
    points_lps = markups_lps(points)[0] if points is not None else None
    job = Job4D(source.GetID() if not isinstance(source, (list, tuple)) else None,
                [str(work / f"phase_{k}.nrrd") for k in range(len(nodes))], names, reference, str(work / "out"))
    for image, path in zip(images, job.phase_paths):
        sitk.WriteImage(image, path, True)
    if points_lps is not None:
        job.points_path = str(work / "points.mrk.json")
        write_markups_json(job.points_path, points_lps)
    if labels is not None:
        job.segmentation_path = str(work / "segmentation.nrrd")
        job.segmentation_phase, job.target_phase = seg_phase, target
        job.segmentation_name = segmentation.GetName()
        sitk.WriteImage(labels, job.segmentation_path, True)
    return job


@dataclass
class FourDNodes:
    """What a 4D registration put in the scene, and its numbers."""

    transforms: object
    ventilation: object
    ventilation_hu: object
    table: object
    browser: object
    segmentation: object | None
    summary: dict

    @property
    def seconds(self) -> float:
        return float(sum(self.summary.get("seconds", {}).values()))

    def describe(self) -> str:
        rows = self.summary["phases"]
        change = [r["volume_change_percent"] for r in rows]
        worst = max(r["folding_percent"] for r in rows)
        return (f"{len(rows)} phases against phase {self.summary['reference']}: lung volume change "
                f"{min(change):+.1f} % to {max(change):+.1f} %, folding at most {worst:.3f} %.")


def _sequence(scene, name: str, source):
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    seq.SetIndexName("phase")
    seq.SetIndexUnit("")
    seq.SetIndexType(seq.NumericIndex)
    if source is not None:
        seq.SetNodeReferenceID(SOURCE_REFERENCE, source.GetID())
    return seq


def _phase_table(scene, name: str, rows: list[dict]):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    for key in rows[0]:
        column = vtk.vtkStringArray() if key == "name" else vtk.vtkDoubleArray()
        column.SetName(key)
        for row in rows:
            value = row.get(key) or "nan"  # a phase without an inverse field has no consistency error
            column.InsertNextValue(str(row[key]) if key == "name" else float(value))
        table.AddColumn(column)
    node.Modified()
    return node


def load_4d_results(scene, job: Job4D) -> FourDNodes:
    """Turn a finished ``progreg register-4d`` output folder into nodes (see the module docstring)."""
    import slicer

    out = Path(job.out_dir)
    source = scene.GetNodeByID(job.source_id) if job.source_id else None
    if job.source_id and source is None:
        raise InputError("the phase sequence was removed from the scene during the registration")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    base = source.GetName() if source is not None else "phases"
    transforms = _sequence(scene, f"{base} transforms", source)
    ventilation = _sequence(scene, f"{base} ventilation (Jacobian)", source)
    ventilation_hu = _sequence(scene, f"{base} ventilation (HU)", source)
    transform_file = next(f for f in summary["files"] if f.startswith("phase_0/transform."))[len("phase_0/"):]
    for k in range(len(summary["phases"])):
        folder = out / f"phase_{k}"
        transform = slicer.vtkMRMLGridTransformNode()
        transform.SetName(f"{base} transform {k}")
        set_grid_transform(transform, read_displacement_field(folder / transform_file))
        transforms.SetDataNodeAtValue(transform, str(k))
        for seq, name in ((ventilation, "ventilation_jacobian.nrrd"), (ventilation_hu, "ventilation_hu.nrrd")):
            volume = slicer.vtkMRMLScalarVolumeNode()
            volume.SetName(f"{seq.GetName()} {k}")
            set_volume_from_image(volume, sitk.ReadImage(str(folder / name)))
            seq.SetDataNodeAtValue(volume, str(k))
    with open(out / "phases.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    table = _phase_table(scene, f"{base} phases", rows)
    browser = _browser(scene, f"{base} registration", transforms, source, ventilation, ventilation_hu)
    segmentation = None
    if job.segmentation_path:
        labels = read_image(out / f"phase_{job.target_phase}" / "segmentation.nrrd")
        segmentation = _segmentation_node(scene, labels, f"{job.segmentation_name} (phase {job.target_phase})")
    return FourDNodes(transforms, ventilation, ventilation_hu, table, browser, segmentation, summary)


def _sequences_logic(scene):
    """Slicer's Sequences logic (in Slicer its module's; on slicer-core one of our own)."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    cls = getattr(slicer, "vtkSlicerSequencesLogic", None) or slicer.vtkSlicerSequencesModuleLogic.vtkSlicerSequencesLogic
    logic = cls()
    logic.SetMRMLScene(scene)
    return logic


def _browser(scene, name: str, transforms, source, *synchronized):
    """A Sequence browser stepping through the phases' transforms and ``synchronized`` together,
    with its proxy nodes (the transform and maps of the current phase). With a source Sequence,
    the browser's own proxy of the current phase is placed under the current transform: the
    phase shown aligned to the reference, phase after phase. The user's nodes are untouched."""
    logic = _sequences_logic(scene)  # (registers the browser's node class with the scene)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(name))
    browser.SetAndObserveMasterSequenceNodeID(transforms.GetID())
    for seq in synchronized:
        browser.AddSynchronizedSequenceNodeID(seq.GetID())
    if source is not None:
        browser.AddSynchronizedSequenceNodeID(source.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    if source is not None:
        browser.GetProxyNode(source).SetAndObserveTransformNodeID(browser.GetProxyNode(transforms).GetID())
    return browser


def _segmentation_node(scene, labels: sitk.Image, name: str):
    """A segmentation node holding one segment per label of ``labels`` (LPS label map)."""
    import slicer

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("import"))
    try:
        set_volume_from_image(labelmap, labels)
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            raise InputError(f"{name}: the label map could not be imported as segments")
        return node
    finally:
        scene.RemoveNode(labelmap)


def register_sequence_nodes(scene, source, reference: int = 0, points=None, segmentation=None,
                            segmentation_phase: int | None = None, target_phase: int | None = None,
                            model: str | Path | Model | None = None, device: str = "cpu",
                            refinement: RefineConfig | None = DEFAULT_REFINEMENT, progress=None) -> FourDNodes:
    """Register every phase of ``source`` (a Sequence of volumes or a list of volume nodes)
    to phase ``reference``, in-process, and put the results in ``scene``::

        import ProgressiveRegistrationLib.slicer.mrml4d as m4
        r = m4.register_sequence_nodes(slicer.mrmlScene, sequenceNode, reference=5)
        r.transforms, r.ventilation, r.table, r.segmentation

    Inputs are never modified. Bad input raises InputError before any node is made.
    """
    with tempfile.TemporaryDirectory(prefix="progreg-4d-") as work:
        job = export_4d_job(scene, source, reference, work, points, segmentation, segmentation_phase, target_phase)
        register_4d_files(job.phase_paths, job.out_dir, job.reference, job.points_path, job.segmentation_path,
                          job.segmentation_phase, model, device, refinement, progress=progress, names=job.names)
        return load_4d_results(scene, job)



def sample_phase_sequence(scene, amplitudes_mm=(0.0, 5.0, 10.0, 15.0)):
    """A Sequence of the bundled CT (inhale, phase 0) and simulated exhales of it with the
    given diaphragm motions: a small 4DCT to try the module on."""
    import slicer

    inhale = read_image(BUNDLED_SAMPLE)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName("sample 4DCT"))
    seq.SetIndexName("phase")
    seq.SetIndexType(seq.NumericIndex)
    for k, amplitude in enumerate(amplitudes_mm):
        image = inhale if amplitude == 0 else simulate(inhale, seed=k, amplitude_si_mm=amplitude,
                                                        amplitude_ap_mm=amplitude / 3).exhale
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"sample phase {k}")
        set_volume_from_image(volume, image)
        seq.SetDataNodeAtValue(volume, str(k))
    return seq
