"""MRML side of the module, Qt-free: every function takes the scene as a parameter.

Runs inside Slicer and against the ``slicer-core`` wheel (real MRML without Qt), which is
how it is tested. Slicer works in RAS, files and the engine in LPS: the conversion
``diag(-1, -1, 1)`` happens here and nowhere else.

Outputs of a registration:

* a ``vtkMRMLGridTransformNode`` holding the field as a ``vtkOrientedGridTransform`` in the
  FromParent (resampling, fixed -> moving) direction, with the standard registration node
  references to the fixed and moving volumes, set as the moving volume's parent transform;
* a scalar volume of the Jacobian determinant on the fixed volume's geometry;
* optionally the moving volume resampled onto the fixed volume's geometry (the engine's
  warped image);
* a table: one row per landmark (label, TRE before, after the network alone, after
  refinement) plus mean and SD rows. The last column is the TRE of the transform node the
  user has, measured through it (Slicer evaluates a grid transform with its own, cubic,
  interpolation; the engine's number, linear, is kept in the summary); the network-alone
  column is the engine's (that field is not a node).

Every output node records the pair it belongs to: the node references
:data:`FIXED_REFERENCE` and :data:`MOVING_REFERENCE` (the transform's registration roles) to
the fixed and moving volumes, and :data:`OUTPUT_ATTRIBUTE`. An output node given for the
results (the panel's selected outputs, or the ``transform``, ``jacobian``, ... arguments) is
refilled only if it belongs to the same pair or to none (a new, empty node): one of another
pair keeps that pair's results, a new node is made instead and the log says so
(:func:`own_output`).

The registration in Slicer's own process and the simulated samples are in :mod:`.inprocess`:
this module imports neither torch nor numba, so that the panel's export of a background run's
inputs and the loading of its results keep Slicer's GUI from waiting seconds for them to load.

Volumes under a linear parent transform are registered in world coordinates (their
world geometry is exported, the user's transform is left as it is); under a non-linear
one the registration is refused with a message. The result is set as the moving volume's
parent only if it has none: a user's transform is never replaced.
"""

from __future__ import annotations

import csv
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..core.checks import check_volume
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import displacement_image, read_displacement_field, write_transform
from ..core.metrics import summary as tre_summary
from ..core.metrics import worse_after_refinement
from ..io.dicom_reg import series_reference_of_files, write_registration
from ..io.images import read_image
from ..io.landmarks import write_markups_json
from ..io.resources import BUNDLED_SAMPLE
from ..registration.display import JACOBIAN_RANGE
from ..registration.tolerances import tolerance_text, value_text

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

log = logging.getLogger(__name__)


# --- nodes <-> images and points ---------------------------------------------------------------

def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


RESULT_ATTRIBUTE = "ProgressiveRegistration.model"
#: The node references from every output node to the volumes of its pair: the registration
#: roles of ``vtkMRMLTransformNode`` (``GetFixedNodeReferenceRole``, ``GetMovingNodeReferenceRole``),
#: which the transform has as Slicer's registration modules set them, on the other outputs too.
FIXED_REFERENCE = "spatialRegistrationFixed"
MOVING_REFERENCE = "spatialRegistrationMoving"
#: Attribute naming what an output node of a pair is ("transform", "Jacobian", "TRE table", ...).
OUTPUT_ATTRIBUTE = "ProgressiveRegistration.pairOutput"
#: Attributes by which an output node is known as one (the last three are older than
#: :data:`OUTPUT_ATTRIBUTE`, in scenes saved before it): a node with one of them but without
#: the references holds the result of a pair that is no longer known (its volumes were
#: removed, or the scene did not record them).
_OUTPUT_MARKS = (OUTPUT_ATTRIBUTE, RESULT_ATTRIBUTE, "ProgressiveRegistration.foldingPercent",
                 "ProgressiveRegistration.overall")


def is_result_of(transform, moving) -> bool:
    """Whether ``transform`` is a registration result of this module for ``moving``, at the
    top of its transform tree (so that a new result may take its place)."""
    return (transform is not None and transform.GetAttribute(RESULT_ATTRIBUTE) is not None
            and transform.GetNodeReference(transform.GetMovingNodeReferenceRole()) is moving
            and transform.GetParentTransformNode() is None)


def _to_world_ras(node, what: str) -> np.ndarray:
    """4x4 RAS matrix of the node's parent transforms (identity without one, or when the
    parent is an earlier result of this module for it); InputError if they are not
    linear, or not a rotation and translation (a volume grid cannot carry shear or
    scaling without resampling)."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None or is_result_of(parent, node):
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"{what} is under the non-linear transform '{parent.GetName()}': harden it "
                         "(Data module: right-click the volume, Harden transform) or remove it, then register")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    a = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    if not np.allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-6) or np.linalg.det(a[:3, :3]) <= 0:
        raise InputError(f"{what} is under the transform '{parent.GetName()}', which scales, shears or mirrors it: "
                         "harden it (Data module: right-click the volume, Harden transform), then register")
    return a


def grid_of_volume_node(node, world: bool = False, what: str | None = None) -> Grid:
    """The LPS :class:`Grid` of a volume node: its own geometry, or with ``world`` its
    geometry in world coordinates (through its rigid parent transforms; InputError, naming
    the volume as ``what``, for any other parent)."""
    dims = node.GetImageData().GetDimensions()
    m = _ijk_to_ras(node)
    if world:
        m = _to_world_ras(node, what or f"volume '{node.GetName()}'") @ m
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction_lps = LPS_TO_RAS @ (m[:3, :3] / spacing)
    origin_lps = LPS_TO_RAS @ m[:3, 3]
    return Grid(tuple(int(d) for d in dims), tuple(float(s) for s in spacing), tuple(float(v) for v in origin_lps),
                tuple(float(v) for v in direction_lps.ravel()))


def image_from_volume_node(node, what: str) -> sitk.Image:
    """A SimpleITK image (LPS, world coordinates) of a scalar volume node, checked for sanity."""
    import slicer.util

    if node is None or node.GetImageData() is None:
        raise InputError(f"{what}: no volume (or a volume without image data)")
    arr = slicer.util.arrayFromVolume(node)
    if arr.ndim != 3:
        raise InputError(f"{what}: expected a 3D scalar volume, got an array of shape {arr.shape}")
    grid = grid_of_volume_node(node, world=True, what=what)  # refuses a non-rigid parent before any copy
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    grid.apply_to(image)
    check_volume(image, what)
    return image


def markups_lps(node) -> tuple[np.ndarray, list[str]]:
    """(n, 3) LPS positions (world coordinates, as the volumes) and labels of a point list."""
    import slicer.util

    ras = np.asarray(slicer.util.arrayFromMarkupsControlPoints(node, world=True), dtype=np.float64).reshape(-1, 3)
    labels = [node.GetNthControlPointLabel(i) or str(i + 1) for i in range(len(ras))]
    return ras @ LPS_TO_RAS, labels


def _vtk_matrix(a: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


# --- output nodes --------------------------------------------------------------------------------

def pair_of(node) -> tuple[str | None, str | None] | None:
    """The IDs of the (fixed, moving) volumes whose registration result ``node`` holds (None in
    place of a volume that was removed from the scene), or None for a node that holds no
    registration result (a new node, or one the user made for something else)."""
    pair = (node.GetNodeReferenceID(FIXED_REFERENCE) or None, node.GetNodeReferenceID(MOVING_REFERENCE) or None)
    if pair != (None, None) or any(node.GetAttribute(a) is not None for a in _OUTPUT_MARKS):
        return pair
    return None


def _pair_text(scene, pair) -> str:
    if pair == (None, None):
        return "volumes that are no longer known"

    def name(node_id):
        node = scene.GetNodeByID(node_id) if node_id else None
        return f"'{node.GetName()}'" if node is not None else "a removed volume"

    return f"moving {name(pair[1])} to fixed {name(pair[0])}"


def own_output(node, fixed, moving, what: str):
    """``node`` if the results of ``fixed`` and ``moving`` may go into it (it belongs to that
    pair, or to none: :func:`pair_of`), else None, with a log line naming it and the pair it
    belongs to (its results are kept; the caller makes a new node). ``what``: the output's
    role, for the log."""
    if node is None:
        return None
    pair = pair_of(node)
    if pair is None or pair == (fixed.GetID(), moving.GetID()):
        return node
    scene = fixed.GetScene()
    log.info("The %s '%s' holds the registration of %s, so it is kept and a new node is made for %s.", what,
             node.GetName(), _pair_text(scene, pair), _pair_text(scene, (fixed.GetID(), moving.GetID())))
    return None


def into_folder_of(node, reference) -> None:
    """Put a node this module made in the subject-hierarchy folder (study, patient or folder
    item) that holds ``reference``, an input volume, so that a patient's results stay with the
    patient in the Data module. Nothing changes where ``reference`` is at the scene's top, nor
    for nodes hidden from the Data module (a Sequence browser)."""
    import slicer

    if node.GetHideFromEditors():
        return
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    ref_item = sh.GetItemByDataNode(reference)
    parent = sh.GetItemParent(ref_item) if ref_item else 0
    if not parent or parent == sh.GetSceneItemID():
        return
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def _output_node(scene, node, fixed, moving, what: str, cls: str, name: str):
    """``node`` (:func:`own_output`) or a new ``cls`` node named ``name``, marked as the ``what``
    output of the pair ``fixed``, ``moving``."""
    node = own_output(node, fixed, moving, what)
    if node is None:
        node = scene.AddNewNodeByClass(cls, scene.GenerateUniqueName(name))
        into_folder_of(node, fixed)
    node.SetNodeReferenceID(FIXED_REFERENCE, fixed.GetID())
    node.SetNodeReferenceID(MOVING_REFERENCE, moving.GetID())
    node.SetAttribute(OUTPUT_ATTRIBUTE, what)
    return node


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@contextmanager
def temporary_nodes(scene):
    """Removes every node added to ``scene`` inside the block, except those passed to the
    ``keep`` function it yields (with their display and storage nodes); if the block
    fails, every node it added. Slicer's export and import make nodes besides the ones asked
    for (a label map's display node and colour table, vtkSlicerSegmentationsModuleLogic.cxx,
    ``ExportSegmentsToLabelmapNode``, v5.6.2 to v5.10.0)."""
    before, kept = _node_ids(scene), []
    ok = False
    try:
        yield kept.append
        ok = True
    finally:
        keep = set()
        for node in kept if ok else []:
            keep.add(node.GetID())
            for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
                keep.add(node.GetNthDisplayNodeID(i))
            for i in range(node.GetNumberOfStorageNodes() if hasattr(node, "GetNumberOfStorageNodes") else 0):
                keep.add(node.GetNthStorageNodeID(i))
        for node_id in _node_ids(scene) - before - keep:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


def segments_of(node) -> list[tuple[str, str, tuple[float, float, float]]]:
    """(ID, name, RGB colour) of the segments exported from a segmentation node: the visible
    ones (all of them without a display node), in the segmentation's order."""
    import vtk

    segmentation = node.GetSegmentation()
    ids = vtk.vtkStringArray()
    display = node.GetDisplayNode()
    if display is not None:
        display.GetVisibleSegmentIDs(ids)
    else:
        segmentation.GetSegmentIDs(ids)
    found = []
    for i in range(ids.GetNumberOfValues()):
        segment = segmentation.GetSegment(ids.GetValue(i))
        found.append((ids.GetValue(i), segment.GetName(), tuple(float(c) for c in segment.GetColor())))
    return found


def string_array(values):
    import vtk

    array = vtk.vtkStringArray()
    for v in values:
        array.InsertNextValue(v)
    return array


def labels_of_node(scene, node, reference_volume, what: str, segments=None) -> sitk.Image:
    """A label map (LPS, on ``reference_volume``'s geometry) of a labelmap volume node or of
    a segmentation node's ``segments`` (default :func:`segments_of`; label value ``i + 1``
    for the ``i``-th). The scene is left as it was."""

    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return image_from_volume_node(node, what)
    if not node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{what}: a segmentation or labelmap volume is needed")
    segments = segments_of(node) if segments is None else segments
    if not segments:
        raise InputError(f"{what}: it has no visible segment")
    logic = segmentations_logic(scene)
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("export"))
        if not logic.ExportSegmentsToLabelmapNode(
                node, string_array([s[0] for s in segments]), labelmap, reference_volume):
            raise InputError(f"{what}: could not be exported as a label map")
        return image_from_volume_node(labelmap, what)


def segmentations_logic(scene):
    """Slicer's Segmentations logic (in Slicer its module's). On slicer-core the segment
    representations are registered (in the converter factory, for good) by making one logic
    with a scene, once: without them a segment cannot be added by ID."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations"):
        return modules.segmentations.logic()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.ConstructRepresentationObjectByRepresentation("Binary labelmap") is None:
        slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    return slicer.vtkSlicerSegmentationsModuleLogic  # (the methods used here are static)


def set_grid_transform(node, displacement: sitk.Image) -> None:
    """Store an ITK displacement field (LPS, resampling direction) as the node's FromParent
    ``vtkOrientedGridTransform`` (RAS displacements on the same grid)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    grid = Grid.from_image(displacement)
    disp_lps = sitk.GetArrayFromImage(displacement).astype(np.float64)  # [k, j, i, 3]
    disp_ras = disp_lps * np.array([-1.0, -1.0, 1.0])
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    image.SetSpacing(*grid.spacing_mm)
    image.SetOrigin(*(LPS_TO_RAS @ np.asarray(grid.origin_lps)))
    scalars = numpy_support.numpy_to_vtk(disp_ras.reshape(-1, 3), deep=True, array_type=vtk.VTK_DOUBLE)
    scalars.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(scalars)
    direction = np.eye(4)
    direction[:3, :3] = LPS_TO_RAS @ grid.direction_matrix
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(image)
    transform.SetGridDirectionMatrix(_vtk_matrix(direction))
    # Cubic: what Slicer makes of a displacement-field file when a saved scene is loaded
    # again (vtkMRMLTransformStorageNode; Testing/test_mrml.py checks it), so the transform
    # is the same before and after saving. Between grid points it differs from ITK's linear
    # interpolation of the same field by far less than a voxel (also tested).
    transform.SetInterpolationModeToCubic()
    node.SetAndObserveTransformFromParent(transform)


def set_volume_from_image(node, image: sitk.Image) -> None:
    import slicer.util

    grid = Grid.from_image(image)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ grid.direction_matrix @ np.diag(grid.spacing_mm)
    m[:3, 3] = LPS_TO_RAS @ np.asarray(grid.origin_lps)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(_vtk_matrix(m))


#: The TRE table's value columns: before registration; after the network alone, as the engine
#: measured it (that field is not in the scene); after registration, measured through the
#: transform node (:func:`tre_through_transform_mm`), i.e. the transform the user has.
TRE_COLUMNS = ("TRE before (mm)", "TRE network alone (mm, engine)", "TRE after (mm, through the transform node)")


def tre_through_transform_mm(transform_node, fixed_lps: np.ndarray, moving_lps: np.ndarray) -> np.ndarray:
    """Per pair ``|T(f) − m|`` in mm, with ``T`` the node's own FromParent transform evaluated
    by Slicer (RAS in, RAS out; for this module's grid transforms Slicer's cubic
    interpolation, see :func:`set_grid_transform`), ``f``, ``m`` world LPS points."""
    from_parent = transform_node.GetTransformFromParent()
    fixed_ras = np.asarray(fixed_lps, dtype=np.float64).reshape(-1, 3) @ LPS_TO_RAS
    moving_ras = np.asarray(moving_lps, dtype=np.float64).reshape(-1, 3) @ LPS_TO_RAS
    mapped = np.array([from_parent.TransformPoint(*(float(v) for v in p)) for p in fixed_ras]).reshape(-1, 3)
    return np.linalg.norm(mapped - moving_ras, axis=1)


#: The TRE table's last column: where the refinement moved a landmark away from its partner.
WORSE_COLUMN = "refinement made it worse"


def set_tre_table(node, labels: list[str], before: np.ndarray, network: np.ndarray, after: np.ndarray) -> None:
    """One row per landmark (label; TRE before, after the network alone, after registration,
    in mm, see :data:`TRE_COLUMNS`; :data:`WORSE_COLUMN`: "+2.31 mm" where the refinement made
    it worse, :func:`metrics.worse_after_refinement`), then 'mean' and 'sd' rows."""
    import vtk

    table = node.GetTable()
    table.Initialize()
    names, worse_text = vtk.vtkStringArray(), vtk.vtkStringArray()
    names.SetName("label")
    worse_text.SetName(WORSE_COLUMN)
    values = np.stack([np.asarray(before, float), np.asarray(network, float), np.asarray(after, float)], 1)
    worse = worse_after_refinement(values[:, 1], values[:, 2])
    notes = [f"+{a - n:.2f} mm" if w else "" for n, a, w in zip(values[:, 1], values[:, 2], worse)]
    rows = [*zip(labels, values, notes), ("mean", values.mean(0), ""), ("sd", values.std(0), "")]
    cols = []
    for title in TRE_COLUMNS:
        col = vtk.vtkDoubleArray()
        col.SetName(title)
        cols.append(col)
    for label, row, note in rows:
        names.InsertNextValue(str(label))
        worse_text.InsertNextValue(note)
        for col, v in zip(cols, row):
            col.InsertNextValue(float(v))
    table.AddColumn(names)
    for col in cols:
        table.AddColumn(col)
    table.AddColumn(worse_text)
    node.Modified()


JACOBIAN_COLORS = "ProgressiveRegistration Jacobian"


def needs_names_initialised(color_node) -> bool:
    """Whether names given with ``SetColor`` stick only after ``SetNamesInitialised(True)``.

    Up to Slicer 5.8, ``vtkMRMLColorNode::GetColorName`` rebuilds every name from the colours
    unless that flag is set (Libs/MRML/Core/vtkMRMLColorNode.cxx, v5.6.2 and v5.8.1). From
    5.10 the flag is gone: the method does nothing but log a VTK error
    (Libs/MRML/Core/vtkMRMLColorNode.h, v5.10.0; the same change, commit 65409219f7, added
    ``SetColorDefined``, by which the newer API is told apart)."""
    return not hasattr(color_node, "SetColorDefined")


def user_color_table(scene, name: str):
    """(the scene's colour table ``name``, whether it was made now): a new one is a 256-colour
    user table, ready for ``SetColor`` on every Slicer version, for the caller to fill."""
    node = scene.GetFirstNodeByName(name)
    if node is not None:
        return node, False
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    if needs_names_initialised(node):
        node.SetNamesInitialised(True)
    return node, True


def jacobian_color_node(scene):
    """A colour table for det J over [0, 2]: magenta at det <= 0 (folding), blue where the
    tissue compresses, white at 1, red where it expands. Made once per scene."""
    node, made = user_color_table(scene, JACOBIAN_COLORS)
    if not made:
        return node
    for i in range(256):
        v = 2.0 * i / 255.0
        if i == 0:
            rgb = (1.0, 0.0, 1.0)  # det <= 0: folding
        elif v < 1.0:
            rgb = (v, v, 1.0)
        else:
            rgb = (1.0, 2.0 - v, 2.0 - v)
        node.SetColor(i, f"{v:.3f}", *rgb, 1.0)
    node.SetAttribute("Category", "ProgressiveRegistration")
    return node


def _style_jacobian(node) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(jacobian_color_node(node.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*JACOBIAN_RANGE)


QUALITY_COLORS = "ProgressiveRegistration doubt"
QUALITY_COLUMNS = ("check", "value", "tolerance", "verdict", "tolerance from")


def set_quality_table(node, quality: dict) -> None:
    """The report's check table (``summary["quality"]``): one row per check with its value, its
    tolerance and PASS / WARN / FAIL (as the report shows them), then the overall verdict
    (UNVERIFIED: accuracy not verified). The information rows are the report's only."""
    import vtk

    table = node.GetTable()
    table.Initialize()
    columns = []
    for title in QUALITY_COLUMNS:
        col = vtk.vtkStringArray()
        col.SetName(title)
        columns.append(col)
    for r in quality["checks"]:
        for col, text in zip(columns, (r["label"], value_text(r), tolerance_text(r), r["verdict"], r["source"])):
            col.InsertNextValue(text)
    for col, text in zip(columns, ("overall", "", "", quality["overall"], "")):
        col.InsertNextValue(text)
    for col in columns:
        table.AddColumn(col)
    node.SetAttribute("ProgressiveRegistration.overall", quality["overall"])
    node.Modified()


def quality_color_node(scene):
    """A colour table for the doubt map (1 − local NCC over [0, 1]): transparent where the images
    agree, through orange to bright yellow where they do not, so it lies over the CT."""
    node, made = user_color_table(scene, QUALITY_COLORS)
    if not made:
        return node
    for i in range(256):
        t = i / 255.0
        rgb = (min(1.0, 2.0 * t + 0.2), max(0.0, 2.0 * t - 0.6), max(0.0, 4.0 * t - 3.0))
        node.SetColor(i, f"{t:.2f}", *rgb, min(1.0, 3.0 * t))
    node.SetAttribute("Category", "ProgressiveRegistration")
    return node


def set_quality_volume(node, image: sitk.Image) -> None:
    """The doubt map (``quality.nrrd``) in ``node`` with :func:`quality_color_node` over [0, 1]."""
    set_volume_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(quality_color_node(node.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)


@dataclass
class RegistrationNodes:
    """What a registration put in the scene, and its numbers."""

    transform: object
    jacobian: object
    table: object | None
    summary: dict
    seconds: float = 0.0
    tre_before_mm: dict | None = None
    tre_after_mm: dict | None = None
    warnings: list[str] = field(default_factory=list)
    tre_network_mm: dict | None = None
    volume: object | None = None
    tre_after_engine_mm: dict | None = None
    #: the check table (PASS / WARN / FAIL per check) and the doubt map, when the quality was measured
    quality_table: object | None = None
    quality_map: object | None = None
    #: the report written with the result (``report.html``), while its folder exists
    report_path: str | None = None
    #: the inverse transform (on the moving volume's geometry), when one was asked for
    inverse: object | None = None

    @property
    def folding_percent(self) -> float:
        return self.summary["folding_percent"]

    def describe(self) -> str:
        text = f"Folding: {self.folding_percent:.3f} % of body voxels."
        if self.tre_before_mm:
            b, n, a = self.tre_before_mm, self.tre_network_mm, self.tre_after_mm
            refined = f"network alone {n['mean']:.2f} ± {n['sd']:.2f} mm, " if self.summary.get("refinement") else ""
            text = (f"TRE before {b['mean']:.2f} ± {b['sd']:.2f} mm, {refined}after {a['mean']:.2f} ± {a['sd']:.2f} mm "
                    f"(n = {a['n']}). ") + text
        return " ".join([text, *self.warnings])


def output_nodes(scene, fixed, moving, displacement: sitk.Image, jacobian: sitk.Image, summary: dict,
             landmarks: dict | None, transform=None, jacobian_node=None, table=None,
             apply_to_moving: bool = True, warped: sitk.Image | None = None, volume=None,
             quality_image: sitk.Image | None = None, quality_table=None, quality_map=None,
             inverse_field: sitk.Image | None = None, inverse=None) -> RegistrationNodes:
    """The output nodes of a registration. ``landmarks``: ``labels``, ``fixed_lps``,
    ``moving_lps`` (world LPS mm), ``before_mm``, ``network_mm`` (the engine's TRE) and
    ``used`` (pairs inside both images, the statistics' pairs); ``warped``: the moving image
    on the fixed grid, put in ``volume`` (a new node if None). A given node that belongs to
    another pair keeps its content: a new node takes its place (:func:`own_output`)."""
    base = moving.GetName() or "moving"
    # The transform's references are the roles Slicer's registration modules use (vtkMRMLTransformNode.h).
    transform = _output_node(scene, transform, fixed, moving, "transform", "vtkMRMLGridTransformNode",
                             f"{base} registered")
    set_grid_transform(transform, displacement)
    transform.SetAttribute(RESULT_ATTRIBUTE, str(summary.get("model", "")))
    notes = list(summary.get("warnings", []))
    parent = moving.GetParentTransformNode()
    if apply_to_moving and parent is not None and parent is not transform and not is_result_of(parent, moving):
        # Replacing it would lose the user's transform; the result maps world to world, so
        # it belongs above that transform, which only the user may rearrange.
        notes.append(f"The moving volume already has the parent transform '{parent.GetName()}', which was kept: "
                     f"to see the result, make '{transform.GetName()}' the parent of '{parent.GetName()}'.")
    elif apply_to_moving:
        moving.SetAndObserveTransformNodeID(transform.GetID())

    # The Jacobian on the fixed volume's world geometry (the engine computes it on the
    # transform's grid, in world coordinates); the new volume has no parent transform.
    fixed_grid = grid_of_volume_node(fixed, world=True)
    jac_on_fixed = sitk.Resample(jacobian, fixed_grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 1.0,
                                 sitk.sitkFloat32)
    jacobian_node = _output_node(scene, jacobian_node, fixed, moving, "Jacobian", "vtkMRMLScalarVolumeNode",
                                 f"{base} Jacobian")
    set_volume_from_image(jacobian_node, jac_on_fixed)
    jacobian_node.SetAttribute("ProgressiveRegistration.foldingPercent", f"{summary['folding_percent']:.6f}")
    _style_jacobian(jacobian_node)

    if warped is not None:
        volume = _output_node(scene, volume, fixed, moving, "resampled volume", "vtkMRMLScalarVolumeNode",
                              f"{base} resampled")
        set_volume_from_image(volume, warped)
        volume.CreateDefaultDisplayNodes()
    else:
        volume = None

    tre_after = summary.get("tre_after_mm")
    if landmarks is not None:
        after = tre_through_transform_mm(transform, landmarks["fixed_lps"], landmarks["moving_lps"])
        tre_after = tre_summary(after[np.asarray(landmarks["used"], dtype=bool)])
        table = _output_node(scene, table, fixed, moving, "TRE table", "vtkMRMLTableNode", f"{base} TRE")
        set_tre_table(table, landmarks["labels"], landmarks["before_mm"], landmarks["network_mm"], after)
    else:
        table = None
    def filled(node, role: str, cls: str, name: str, fill, data):
        """``node`` (or a new one) of the pair filled with ``data``; None without ``data``."""
        if data is None:
            return None
        node = _output_node(scene, node, fixed, moving, role, cls, name)
        fill(node, data)
        return node

    quality_table = filled(quality_table, "quality table", "vtkMRMLTableNode", f"{base} quality checks",
                           set_quality_table, summary.get("quality") or None)
    quality_map = filled(quality_map, "doubt map", "vtkMRMLScalarVolumeNode", f"{base} doubt", set_quality_volume,
                         quality_image)
    # FromParent as for the result: it resamples the fixed volume's data onto the moving volume.
    inverse = filled(inverse, "inverse transform", "vtkMRMLGridTransformNode", f"{base} registered inverse",
                     set_grid_transform, inverse_field)
    seconds = float(sum(v for v in summary.get("seconds", {}).values()))
    return RegistrationNodes(transform, jacobian_node, table, summary, seconds, summary.get("tre_before_mm"),
                             tre_after, notes, summary.get("tre_network_mm"), volume, summary.get("tre_after_mm"),
                             quality_table, quality_map, inverse=inverse)


def check_inputs(scene, fixed, moving, fixed_landmarks, moving_landmarks):
    if fixed is None or moving is None:
        raise InputError("select a fixed and a moving volume")
    if fixed is moving or fixed.GetID() == moving.GetID():
        raise InputError("fixed and moving volumes must be different nodes")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("give both landmark lists, or neither")
    fixed_image = image_from_volume_node(fixed, f"fixed volume '{fixed.GetName()}'")
    moving_image = image_from_volume_node(moving, f"moving volume '{moving.GetName()}'")
    points = None
    if fixed_landmarks is not None:
        f, labels = markups_lps(fixed_landmarks)
        m, _ = markups_lps(moving_landmarks)
        if len(f) != len(m):
            raise InputError(f"landmarks: {len(f)} fixed but {len(m)} moving points; they must pair up")
        if len(f) == 0:
            raise InputError("landmarks: the point lists are empty")
        points = (f, m, labels)
    return fixed_image, moving_image, points


# --- the background-process path of the module ---------------------------------------------------

@dataclass
class Job:
    fixed_id: str
    moving_id: str
    fixed_path: str
    moving_path: str
    out_dir: str
    fixed_landmarks_path: str | None = None
    moving_landmarks_path: str | None = None
    fixed_mask_path: str | None = None
    moving_mask_path: str | None = None
    initial_transform_path: str | None = None

    def command(self, python: str, model: str | None = None, device: str = "cpu", refine: bool = True,
                warped: bool = False, overview: bool = False, inverse: bool = False) -> list[str]:
        """The ``progreg register`` command line of this job, run by ``python`` (PythonSlicer in
        Slicer): progress as JSON lines; the warped image only with ``warped`` (for a resampled
        volume node) and the overview figure only with ``overview`` (for result files the user
        keeps): Slicer shows the transform itself."""
        args = [python, "-m", "ProgressiveRegistrationLib", "register", self.fixed_path, self.moving_path,
                "--out", self.out_dir, "--device", device, "--progress-json"]
        if not warped:
            args.append("--no-warped")
        if not overview:
            args.append("--no-overview")
        if self.fixed_landmarks_path:
            args += ["--fixed-landmarks", self.fixed_landmarks_path, "--moving-landmarks", self.moving_landmarks_path]
        for option, path in (("--fixed-mask", self.fixed_mask_path), ("--moving-mask", self.moving_mask_path),
                             ("--initial-transform", self.initial_transform_path)):
            if path:
                args += [option, path]
        if model:
            args += ["--model", str(model)]
        if not refine:
            args.append("--no-refine")
        if inverse:
            args.append("--inverse")
        return args


def export_job(scene, fixed, moving, work_dir, fixed_landmarks=None, moving_landmarks=None, fixed_mask=None,
               moving_mask=None, initial_transform=None) -> Job:
    """Write the inputs of a background ``progreg register`` run into ``work_dir``.

    ``fixed_mask``/``moving_mask``: segmentation nodes (their visible segments, on the
    volume's geometry) or labelmap volume nodes; ``initial_transform``: any transform node
    that, as the moving volume's parent, would align it to the fixed volume
    (:func:`write_initial_transform`)."""
    fixed_image, moving_image, points = check_inputs(scene, fixed, moving, fixed_landmarks, moving_landmarks)
    work = Path(work_dir)
    job = Job(fixed.GetID(), moving.GetID(), str(work / "fixed.nrrd"), str(work / "moving.nrrd"), str(work / "out"))
    sitk.WriteImage(fixed_image, job.fixed_path, False)  # uncompressed: the GUI thread waits for it
    sitk.WriteImage(moving_image, job.moving_path, False)
    if points:
        job.fixed_landmarks_path = str(work / "fixed.mrk.json")
        job.moving_landmarks_path = str(work / "moving.mrk.json")
        write_markups_json(job.fixed_landmarks_path, points[0], points[2])
        write_markups_json(job.moving_landmarks_path, points[1])
    for role, node, volume in (("fixed", fixed_mask, fixed), ("moving", moving_mask, moving)):
        if node is not None:
            path = str(work / f"{role}_mask.nrrd")
            sitk.WriteImage(labels_of_node(scene, node, volume, f"{role} mask '{node.GetName()}'"), path, True)
            setattr(job, f"{role}_mask_path", path)
    if initial_transform is not None:
        job.initial_transform_path = write_initial_transform(scene, initial_transform, fixed, moving, work)
    return job


#: Grid step (mm) on which an initial transform that ITK cannot read as it is (a non-linear
#: transform stored in the other direction, or under a parent transform) is sampled.
SAMPLED_TRANSFORM_MM = 3.0


def write_initial_transform(scene, node, fixed, moving, folder: Path) -> str:
    """An ITK file of ``node``'s transform from world (its resampling direction, LPS: a fixed
    point to the moving point) for ``--initial-transform``; returns its path.

    Linear (with its parents): the matrix, exactly (``initial.tfm``). A node of its own,
    non-linear: Slicer's own writer (``initial.h5``), when SimpleITK reads what it wrote. Else
    (an inverse-stored grid or B-spline, a chain of parents): the transform sampled by VTK on a
    :data:`SAMPLED_TRANSFORM_MM` grid over the fixed volume (``initial.nrrd``). Refused when
    the moving volume is already under it: the volume is registered in world coordinates,
    where it is applied."""
    import vtk
    from vtk.util import numpy_support

    chain = moving.GetParentTransformNode()
    while chain is not None:
        if chain.GetID() == node.GetID():
            raise InputError(f"initial transform '{node.GetName()}': the moving volume is already under it, and "
                             "volumes are registered as they lie in the scene: choose no initial transform")
        chain = chain.GetParentTransformNode()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    if node.IsTransformToWorldLinear():
        m = vtk.vtkMatrix4x4()
        node.GetMatrixTransformFromWorld(m)
        lps = flip @ np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)]) @ flip
        path = folder / "initial.tfm"
        sitk.WriteTransform(sitk.AffineTransform(tuple(lps[:3, :3].ravel()), tuple(lps[:3, 3])), str(path))
        return str(path)
    if node.GetParentTransformNode() is None:
        path = folder / "initial.h5"
        with temporary_nodes(scene):
            storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
            storage.SetFileName(str(path))
            written = storage.WriteData(node)
        try:
            if written:
                sitk.ReadTransform(str(path))
                return str(path)
        except RuntimeError:
            pass  # a transform type SimpleITK does not read (an inverse displacement field)
        path.unlink(missing_ok=True)
    lo, hi = grid_of_volume_node(fixed, world=True, what=f"fixed volume '{fixed.GetName()}'").bounding_box_lps()
    corners_ras = np.stack([lo, hi]) @ LPS_TO_RAS
    lo_ras, hi_ras = corners_ras.min(axis=0), corners_ras.max(axis=0)
    size = [int(np.ceil((b - a) / SAMPLED_TRANSFORM_MM)) + 1 for a, b in zip(lo_ras, hi_ras)]
    general = vtk.vtkGeneralTransform()
    node.GetTransformFromWorld(general)
    sampler = vtk.vtkTransformToGrid()
    sampler.SetInput(general)
    sampler.SetGridOrigin(*lo_ras)
    sampler.SetGridSpacing(*(SAMPLED_TRANSFORM_MM,) * 3)
    sampler.SetGridExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    sampler.SetGridScalarTypeToDouble()
    sampler.Update()
    ras = numpy_support.vtk_to_numpy(sampler.GetOutput().GetPointData().GetScalars()).reshape(*size[::-1], 3)
    grid = Grid(tuple(size), (SAMPLED_TRANSFORM_MM,) * 3, tuple(LPS_TO_RAS @ lo_ras),
                tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))
    path = folder / "initial.nrrd"
    write_transform(displacement_image(ras * [-1.0, -1.0, 1.0], grid), path)
    return str(path)


def displacement_of_grid_transform(node) -> sitk.Image:
    """The displacement field (LPS mm, resampling direction, vector float64) of a grid
    transform node stored as this module stores its results (:func:`set_grid_transform`)."""
    import slicer
    from vtk.util import numpy_support

    transform = node.GetTransformFromParent()
    if not isinstance(transform, slicer.vtkOrientedGridTransform) or transform.GetDisplacementGrid() is None:
        raise InputError(f"transform '{node.GetName()}' holds no displacement grid in the resampling direction "
                         "(a registration result of this module does)")
    data = transform.GetDisplacementGrid()
    size = data.GetDimensions()
    ras = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(size[2], size[1], size[0], 3)
    direction = transform.GetGridDirectionMatrix()
    d_ras = np.array([[direction.GetElement(r, c) for c in range(3)] for r in range(3)])
    scale = np.asarray(transform.GetDisplacementScale()) if hasattr(transform, "GetDisplacementScale") else 1.0
    shift = np.asarray(transform.GetDisplacementShift()) if hasattr(transform, "GetDisplacementShift") else 0.0
    grid = Grid(tuple(size), tuple(data.GetSpacing()), tuple(LPS_TO_RAS @ np.asarray(data.GetOrigin())),
                tuple((LPS_TO_RAS @ d_ras).ravel()))
    return displacement_image((ras * scale + shift) * [-1.0, -1.0, 1.0], grid)


def export_dicom_registration(scene, transform, path, file_of_instance) -> None:
    """Write ``transform`` (a registration result: it references its fixed and moving volumes)
    as a DICOM Deformable Spatial Registration object (:mod:`io.dicom_reg`) to ``path``.

    ``file_of_instance(uid)``: the file of a DICOM instance (in Slicer
    ``slicer.dicomDatabase.fileForInstance``), for the volumes' ``DICOM.instanceUIDs``.
    Refused when a volume was not loaded from DICOM, or lies under a transform other than
    the result (the object relates the series as stored)."""
    fixed, moving = transform.GetNodeReference(FIXED_REFERENCE), transform.GetNodeReference(MOVING_REFERENCE)
    if fixed is None or moving is None:
        raise InputError(f"transform '{transform.GetName()}' is not a registration result with its fixed and "
                         "moving volumes")
    references = []
    for role, volume in (("fixed", fixed), ("moving", moving)):
        parent = volume.GetParentTransformNode()
        if parent is not None and parent.GetID() != transform.GetID():
            raise InputError(f"{role} volume '{volume.GetName()}' is under the transform '{parent.GetName()}': the "
                             "DICOM object relates the series as stored; harden or remove that transform and register "
                             "again")
        uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
        files = [file_of_instance(uid) for uid in uids]
        if not uids or not all(files):
            raise InputError(f"{role} volume '{volume.GetName()}' was not loaded from the DICOM database: a DICOM "
                             "registration object references its series by their UIDs")
        references.append(series_reference_of_files(files, f"{role} volume '{volume.GetName()}'"))
    write_registration(path, displacement_of_grid_transform(transform), *references, __version__)


def _tre_csv_landmarks(path) -> dict:
    """The landmarks of a ``tre.csv`` (registration/outputs.py writes it): labels, fixed and
    moving LPS positions, the engine's TRE before and after the network alone, and which pairs
    are in the statistics."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def column(*keys):
        return np.array([[float(r[k]) for k in keys] for r in rows]).reshape(len(rows), len(keys))

    return {"labels": [r["label"] for r in rows], "fixed_lps": column("fixed_l", "fixed_p", "fixed_s"),
            "moving_lps": column("moving_l", "moving_p", "moving_s"), "before_mm": column("tre_before_mm")[:, 0],
            "network_mm": column("tre_network_mm")[:, 0], "used": column("in_statistics")[:, 0] > 0}


def load_results(scene, job: Job, transform=None, jacobian=None, table=None, apply_to_moving: bool = True,
                 volume=None, quality_table=None, quality_map=None, inverse=None) -> RegistrationNodes:
    """Turn a finished ``progreg register`` output folder into output nodes (``volume``: the node
    for the resampled moving volume, made if the run wrote one; ``inverse``: the node for the
    inverse transform, made if the run wrote one). The given nodes are used as
    by :func:`.inprocess.register_volume_nodes`: only if they belong to the job's pair or to none."""
    out = Path(job.out_dir)
    fixed, moving = scene.GetNodeByID(job.fixed_id), scene.GetNodeByID(job.moving_id)
    if fixed is None or moving is None:
        raise InputError("the fixed or moving volume was removed from the scene during the registration")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    transform_file = next(out / f for f in summary["files"] if f.startswith("transform."))
    displacement = read_displacement_field(transform_file)
    landmarks = _tre_csv_landmarks(out / "tre.csv") if (out / "tre.csv").exists() else None
    warped = sitk.ReadImage(str(out / "warped_moving.nrrd")) if (out / "warped_moving.nrrd").exists() else None
    quality = sitk.ReadImage(str(out / "quality.nrrd")) if (out / "quality.nrrd").exists() else None
    inverse_file = next((out / f for f in summary["files"] if f.startswith("inverse_transform.")), None)
    inverse_field = read_displacement_field(inverse_file) if inverse_file is not None else None
    nodes = output_nodes(scene, fixed, moving, displacement, sitk.ReadImage(str(out / "jacobian.nrrd")), summary, landmarks,
                         transform, jacobian, table, apply_to_moving, warped, volume, quality, quality_table, quality_map,
                         inverse_field, inverse)
    nodes.report_path = str(out / "report.html") if (out / "report.html").exists() else None
    return nodes


# --- sample data -----------------------------------------------------------------------------------

def add_volume_node(scene, image: sitk.Image, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    set_volume_from_image(node, image)
    return node


def add_points_node(scene, points_lps: np.ndarray, name: str):
    import slicer.util

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    slicer.util.updateMarkupsControlPointsFromArray(node, np.asarray(points_lps) @ LPS_TO_RAS)
    return node


def sample_ct_node(scene):
    """The bundled lung CT as a volume node (no simulation: torch is not needed)."""
    return add_volume_node(scene, read_image(BUNDLED_SAMPLE), "lung CT")
