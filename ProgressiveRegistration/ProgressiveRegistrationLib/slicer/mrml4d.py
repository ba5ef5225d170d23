"""The 4DCT side of the module, Qt-free: every function takes the scene as a parameter.

Input: a Sequence of scalar volumes (Slicer's container for a 4DCT, what loading a 4DCT
DICOM series gives) or a list of volume nodes, one per breathing phase, and the position
(from 0) of the reference phase; optionally points of the reference phase and a
segmentation of one phase. Work: ``progreg register-4d`` (:func:`pipeline.register_4d_files`),
in a background process (:func:`export_4d_job`, then :func:`load_4d_results`) or in-process
(:func:`register_sequence_nodes`). Outputs, all referring to the input by node reference:

* a Sequence of grid transforms (phase k: reference → phase k, Slicer's FromParent
  direction) and Sequences of the Jacobian and HU ventilation maps, with a Sequence
  browser that steps through them together;
* a table with one row per phase (lung volume change, displacement, folding, seconds);
* with points: a table of every point in every phase (RAS mm) and a Sequence of point
  lists (the points where they are in each phase, in that phase's own coordinates);
* the segmentation carried to the chosen phase, as a segmentation node with the segments'
  IDs, names and colours.

Phases are named as the sequence names them (its index values and unit, :func:`phase_names`),
and every output Sequence has the source's index name, unit, type and values: a browser
matches synchronized sequences by index value (Slicer's
Modules/Loadable/Sequences/Logic/vtkSlicerSequencesLogic.cxx, ``UpdateProxyNodesFromSequences``,
and Libs/MRML/Core/vtkMRMLSequenceNode.cxx, ``GetItemNumberFromIndexValue``; v5.6.2 to
v5.10.0), so outputs indexed otherwise would show another phase than the one the browser
is on. Registering the same Sequence again refills the earlier run's output nodes instead
of adding new ones; nothing temporary (label maps, their colour tables and display nodes)
stays in the scene.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.itk_fields import read_displacement_field
from ..io.images import read_image
from ..io.landmarks import write_markups_json
from ..registration.display import VENTILATION_RANGE
from ..registration.tolerances import signed
from . import jobs
from .jobs import phase_label
from .mrml import (
    LPS_TO_RAS,
    image_from_volume_node,
    into_folder_of,
    labels_of_node,
    markups_lps,
    segmentations_logic,
    segments_of,
    set_grid_transform,
    set_volume_from_image,
    string_array,
    temporary_nodes,
    user_color_table,
)

#: Node reference from every output to the Sequence it was computed from.
SOURCE_REFERENCE = "ProgressiveRegistration.phases"
#: Attribute naming what an output node is ("transforms", "ventilation", ...): a second run
#: for the same Sequence finds and refills it.
OUTPUT_ATTRIBUTE = jobs.OUTPUT_ATTRIBUTE
#: The colour table of the ventilation maps.
VENTILATION_COLORS = "ProgressiveRegistration ventilation"


def phase_nodes(source) -> list:
    """The volume nodes of a Sequence (its data nodes) or of a list of volume nodes."""
    if source is None:
        raise InputError("select the phases: a Sequence of volumes, or several volumes")
    if isinstance(source, (list, tuple)):
        nodes = list(source)
    elif source.IsA("vtkMRMLSequenceNode"):
        problem = jobs.phases_problem(source)
        if problem:
            raise InputError(f"register all phases: {problem}")
        nodes = [source.GetNthDataNode(i) for i in range(source.GetNumberOfDataNodes())]
    else:
        raise InputError(f"'{source.GetName()}' is neither a Sequence nor a list of volumes")
    for node in nodes:
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError("every phase must be a scalar volume")
    return nodes


def phase_names(source) -> list[str]:
    """The phases' names: as a Sequence names them (index value and unit, e.g. ``"50 %"``,
    ``"T50"``, :func:`jobs.phase_label`), or the volumes' names for a list."""
    if isinstance(source, (list, tuple)):
        return [node.GetName() or f"phase {k}" for k, node in enumerate(source)]
    return [phase_label(source.GetNthIndexValue(k), source.GetIndexUnit() or "", source.GetIndexName() or "")
            for k in range(source.GetNumberOfDataNodes())]


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
    #: the source Sequence's index (values per phase, name, unit, type); for a list: 0, 1, ...
    index_values: list[str] = field(default_factory=list)
    index_name: str = "phase"
    index_unit: str = ""
    index_type: int = 0
    #: (ID, name, RGB) of the exported segments; label value i + 1 is the i-th
    segments: list = field(default_factory=list)
    point_labels: list[str] = field(default_factory=list)

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
    names = phase_names(source)
    images = [image_from_volume_node(n, names[k]) for k, n in enumerate(nodes)]
    labels, segments = None, []
    if segmentation is not None:
        if segmentation.IsA("vtkMRMLSegmentationNode"):
            segments = segments_of(segmentation)
        labels = labels_of_node(scene, segmentation, nodes[seg_phase], f"segmentation '{segmentation.GetName()}'",
                                segments or None)
    points_lps, point_labels = markups_lps(points) if points is not None else (None, [])
    is_sequence = not isinstance(source, (list, tuple))
    job = Job4D(source.GetID() if is_sequence else None,
                [str(work / f"phase_{k}.nrrd") for k in range(len(nodes))], names, reference, str(work / "out"),
                index_values=[source.GetNthIndexValue(k) if is_sequence else str(k) for k in range(len(nodes))])
    if is_sequence:
        job.index_name, job.index_unit, job.index_type = (source.GetIndexName(), source.GetIndexUnit(),
                                                          source.GetIndexType())
    for image, path in zip(images, job.phase_paths):
        sitk.WriteImage(image, path, False)  # uncompressed: the GUI thread waits for it
    if points_lps is not None:
        job.points_path = str(work / "points.mrk.json")
        job.point_labels = list(point_labels)
        write_markups_json(job.points_path, points_lps, job.point_labels)
    if labels is not None:
        job.segmentation_path = str(work / "segmentation.nrrd")
        job.segmentation_phase, job.target_phase = seg_phase, target
        job.segmentation_name = segmentation.GetName()
        job.segments = segments
        sitk.WriteImage(labels, job.segmentation_path, False)
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
    trajectories: object | None = None
    points: object | None = None
    source: object | None = None

    @property
    def seconds(self) -> float:
        return float(sum(self.summary.get("seconds", {}).values()))

    def describe(self) -> str:
        rows = self.summary["phases"]
        change = [r["volume_change_percent"] for r in rows]
        worst = max(r["folding_percent"] for r in rows)
        reference = self.summary["names"][self.summary["reference"]] if self.summary.get("names") \
            else f"phase {self.summary['reference']}"
        return (f"{len(rows)} phases against {reference}: lung volume change "
                f"{signed(min(change))} % to {signed(max(change))} %, folding at most {worst:.3f} %.")


def earlier_outputs(scene, source) -> dict:
    """The output nodes of an earlier registration of the Sequence ``source``, by role
    (:data:`OUTPUT_ATTRIBUTE`); empty for a list of volumes."""
    found = {}
    if source is None:
        return found
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        role = node.GetAttribute(OUTPUT_ATTRIBUTE)
        if role and node.GetNodeReference(SOURCE_REFERENCE) is source and role not in found:
            found[role] = node
    return found


def _output_node(scene, earlier: dict, role: str, cls: str, name: str, source):
    node = earlier.get(role)
    if node is None:
        node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))
        if source is not None and role != "browser":  # (a browser is where Slicer's Sequences module puts it)
            into_folder_of(node, source)
    node.SetAttribute(OUTPUT_ATTRIBUTE, role)
    if source is not None:
        node.SetNodeReferenceID(SOURCE_REFERENCE, source.GetID())
    return node


def _sequence(scene, earlier: dict, role: str, name: str, source, job: Job4D):
    """An empty output Sequence indexed as the source (name, unit, type)."""
    seq = _output_node(scene, earlier, role, "vtkMRMLSequenceNode", name, source)
    seq.RemoveAllDataNodes()
    seq.SetIndexName(job.index_name)
    seq.SetIndexUnit(job.index_unit)
    seq.SetIndexType(job.index_type)
    return seq


def _fill_table(node, rows: list[dict], text_columns=("name",)) -> None:
    import vtk

    table = node.GetTable()
    table.Initialize()
    for key in rows[0]:
        text = key in text_columns
        column = vtk.vtkStringArray() if text else vtk.vtkDoubleArray()
        column.SetName(key)
        for row in rows:
            value = row.get(key)
            if text:
                column.InsertNextValue(str(value))
            else:  # an empty cell (e.g. no inverse field for the reference phase) is NaN
                column.InsertNextValue(float(value) if value not in (None, "") else float("nan"))
        table.AddColumn(column)
    node.Modified()


def ventilation_color_node(scene):
    """A colour table for ventilation maps over :data:`VENTILATION_RANGE`: blue where the
    phase's lung is smaller than the reference's, red where it is larger, and transparent at
    0 (outside the lungs), so that the map lies over the CT as a foreground layer."""
    node, made = user_color_table(scene, VENTILATION_COLORS)
    if not made:
        return node
    low, high = VENTILATION_RANGE
    for i in range(256):
        t = i / 255.0  # 0 .. 1 over the range
        v = low + t * (high - low)
        if t < 0.5:
            rgb = (2 * t, 2 * t, 1.0)
        else:
            rgb = (1.0, 2 * (1 - t), 2 * (1 - t))
        alpha = 0.0 if i in (127, 128) else 1.0  # the bins around 0
        node.SetColor(i, f"{v:+.3f}", *rgb, alpha)
    node.SetAttribute("Category", "ProgressiveRegistration")
    return node


def style_ventilation(volume) -> None:
    """Show a ventilation volume with :func:`ventilation_color_node` over its fixed range."""
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(ventilation_color_node(volume.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*VENTILATION_RANGE)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_4d_results(scene, job: Job4D) -> FourDNodes:
    """Turn a finished ``progreg register-4d`` output folder into nodes (see the module
    docstring); the output nodes of an earlier run for the same Sequence are refilled."""
    import slicer

    out = Path(job.out_dir)
    source = scene.GetNodeByID(job.source_id) if job.source_id else None
    if job.source_id and source is None:
        raise InputError("the phase sequence was removed from the scene during the registration")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    n = len(summary["phases"])
    values = job.index_values or [str(k) for k in range(n)]
    names = summary.get("names") or job.names
    base = source.GetName() if source is not None else "phases"
    earlier = earlier_outputs(scene, source)
    transforms = _sequence(scene, earlier, "transforms", f"{base} transforms", source, job)
    ventilation = _sequence(scene, earlier, "ventilation", f"{base} ventilation (Jacobian)", source, job)
    ventilation_hu = _sequence(scene, earlier, "ventilation_hu", f"{base} ventilation (HU)", source, job)
    transform_file = next(f for f in summary["files"] if f.startswith("phase_0/transform."))[len("phase_0/"):]
    for k in range(n):
        folder = out / f"phase_{k}"
        transform = slicer.vtkMRMLGridTransformNode()
        transform.SetName(f"{base} transform {names[k]}")
        set_grid_transform(transform, read_displacement_field(folder / transform_file))
        transforms.SetDataNodeAtValue(transform, values[k])
        for seq, name in ((ventilation, "ventilation_jacobian.nrrd"), (ventilation_hu, "ventilation_hu.nrrd")):
            volume = slicer.vtkMRMLScalarVolumeNode()
            volume.SetName(f"{seq.GetName()} {names[k]}")
            set_volume_from_image(volume, sitk.ReadImage(str(folder / name)))
            seq.SetDataNodeAtValue(volume, values[k])
    table = _output_node(scene, earlier, "table", "vtkMRMLTableNode", f"{base} phases", source)
    _fill_table(table, _read_csv(out / "phases.csv"))
    trajectories = points = None
    if (out / "trajectories.csv").exists():
        trajectories, points = _trajectories(scene, earlier, _read_csv(out / "trajectories.csv"), base, source, job,
                                             values)
    synchronized = [s for s in (ventilation, ventilation_hu, points) if s is not None]
    browser = _browser(scene, earlier, f"{base} registration", transforms, source, synchronized,
                       [earlier[r] for r in ("points",) if r in earlier and points is None])
    segmentation = None
    if job.segmentation_path:
        labels = read_image(out / f"phase_{job.target_phase}" / "segmentation.nrrd")
        segmentation = _segmentation_node(scene, earlier, labels, f"{job.segmentation_name} ({names[job.target_phase]})",
                                          job.segments, source)
    return FourDNodes(transforms, ventilation, ventilation_hu, table, browser, segmentation, summary, trajectories,
                      points, source)


#: The trajectories table's columns: point label, phase name, RAS position and distance from the reference (mm).
TRAJECTORY_COLUMNS = ("point", "phase", "R (mm)", "A (mm)", "S (mm)", "displacement (mm)")


def _trajectories(scene, earlier: dict, rows: list[dict], base: str, source, job: Job4D, values: list[str]):
    """``trajectories.csv`` (LPS) as a table (RAS) and as a Sequence of point lists, one per phase."""
    import slicer

    table = _output_node(scene, earlier, "trajectories", "vtkMRMLTableNode", f"{base} trajectories", source)
    ras_rows = []
    for r in rows:
        ras = np.array([float(r["l"]), float(r["p"]), float(r["s"])]) @ LPS_TO_RAS
        ras_rows.append(dict(zip(TRAJECTORY_COLUMNS, (r["label"], r["name"], *ras, float(r["displacement_mm"])))))
    _fill_table(table, ras_rows, text_columns=("point", "phase"))
    points = _sequence(scene, earlier, "points", f"{base} points", source, job)
    for k, value in enumerate(values):
        phase_rows = [r for r in rows if int(r["phase"]) == k]
        node = slicer.vtkMRMLMarkupsFiducialNode()
        node.SetName(f"{base} points {phase_rows[0]['name'] if phase_rows else k}")
        for r in phase_rows:
            ras = np.array([float(r["l"]), float(r["p"]), float(r["s"])]) @ LPS_TO_RAS
            node.AddControlPoint(*(float(v) for v in ras), r["label"])
        points.SetDataNodeAtValue(node, value)
    return table, points


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


def _browser(scene, earlier: dict, name: str, transforms, source, synchronized, stale=()):
    """A Sequence browser stepping through the phases' transforms and ``synchronized`` together,
    with its proxy nodes (the transform and maps of the current phase); ``stale``: earlier
    outputs it no longer steps through. With a source Sequence, the browser's own proxy of the
    current phase is placed under the current transform: the phase shown aligned to the
    reference, phase after phase. The ventilation proxies get their colour map. The user's
    nodes are untouched."""
    logic = _sequences_logic(scene)  # (registers the browser's node class with the scene)
    browser = _output_node(scene, earlier, "browser", "vtkMRMLSequenceBrowserNode", name, source)
    browser.SetAndObserveMasterSequenceNodeID(transforms.GetID())
    for seq in stale:
        browser.RemoveSynchronizedSequenceNode(seq.GetID())
    for seq in [*synchronized, *([source] if source is not None else [])]:
        if not browser.IsSynchronizedSequenceNodeID(seq.GetID(), True):
            browser.AddSynchronizedSequenceNodeID(seq.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    if source is not None:
        browser.GetProxyNode(source).SetAndObserveTransformNodeID(browser.GetProxyNode(transforms).GetID())
    for seq in synchronized:
        proxy = browser.GetProxyNode(seq)
        if proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode"):
            style_ventilation(proxy)
    return browser


def _segmentation_node(scene, earlier: dict, labels: sitk.Image, name: str, segments: list, source):
    """A segmentation node holding label ``i + 1`` of ``labels`` (LPS label map) as the segment
    ``segments[i]`` (ID, name, colour), or one segment per label value without ``segments``
    (a label map was given). The import's label map leaves the scene again."""

    logic = segmentations_logic(scene)
    with temporary_nodes(scene) as keep:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("import"))
        set_volume_from_image(labelmap, labels)
        node = _output_node(scene, earlier, "segmentation", "vtkMRMLSegmentationNode", name, source)
        keep(node)
        if source is not None and node is earlier.get("segmentation"):
            node.SetName(name)
        node.GetSegmentation().RemoveAllSegments()
        if segments:
            ok = logic.ImportLabelmapToSegmentationNode(labelmap, node, string_array([s[0] for s in segments]))
        else:
            ok = logic.ImportLabelmapToSegmentationNode(labelmap, node)
        if not ok:
            raise InputError(f"{name}: the label map could not be imported as segments")
        for segment_id, segment_name, color in segments:
            segment = node.GetSegmentation().GetSegment(segment_id)
            segment.SetName(segment_name)
            segment.SetColor(*color)
        return node


def browse(scene, sequence):
    """A Sequence browser stepping through ``sequence``, with its proxy node (the phase shown)."""
    logic = _sequences_logic(scene)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(f"{sequence.GetName()} browser"))
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    logic.UpdateProxyNodesFromSequences(browser)
    return browser
