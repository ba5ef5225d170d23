"""Registration inside Slicer's process, and the simulated samples: the MRML entry points that
load the engine (torch, numba). The scripting API of Slicer's Python console::

    import ProgressiveRegistrationLib as prl
    r = prl.register_volume_nodes(slicer.mrmlScene, fixedNode, movingNode)
    r = prl.register_sequence_nodes(slicer.mrmlScene, sequenceNode, reference=0)

The module's panel runs the registration in a background process instead, through
:mod:`.mrml` and :mod:`.mrml4d`, which import neither torch nor numba. Qt-free; every function
takes the scene.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..core.itk_fields import read_transform
from ..io.images import read_image
from ..io.resources import BUNDLED_SAMPLE
from ..model.modelfile import Model, load_model
from ..registration.engine import inverse_transform, register_images, summary_of
from ..registration.outputs import jacobian_image
from ..registration.pipeline import register_4d_files
from ..registration.quality import quality_maps, quality_summary
from ..registration.refine_config import DEFAULT as DEFAULT_REFINEMENT
from ..registration.refine_config import RefineConfig
from ..simulation.breathing import simulate
from .mrml import (
    RegistrationNodes,
    add_points_node,
    add_volume_node,
    check_inputs,
    labels_of_node,
    output_nodes,
    set_volume_from_image,
    write_initial_transform,
)
from .mrml4d import FourDNodes, export_4d_job, load_4d_results


def register_volume_nodes(scene, fixed, moving, fixed_landmarks=None, moving_landmarks=None, model=None,
                          device: str = "cpu", transform=None, jacobian=None, table=None, apply_to_moving: bool = True,
                          progress=None, refinement: RefineConfig | None = DEFAULT_REFINEMENT, volume=None,
                          resample: bool = False, quality: bool = True, quality_table=None,
                          quality_map=None, inverse=None, fixed_mask=None, moving_mask=None,
                          initial_transform=None) -> RegistrationNodes:
    """Register two volume nodes in-process and put the results in ``scene``.

    The scripting API for Slicer's Python console::

        import ProgressiveRegistrationLib as prl
        r = prl.register_volume_nodes(slicer.mrmlScene, fixedNode, movingNode)
        r.transform, r.jacobian, r.table   # output nodes (table is None without landmarks)

    ``model``: a model file path (default: the bundled model) or a loaded ``Model``;
    ``refinement``: None for the network's one-pass field; ``resample`` (or a ``volume``
    node to fill): also the moving volume resampled onto the fixed volume's geometry
    (``r.volume``); ``quality``: the AAPM TG-132 checks as a table (``r.quality_table``, PASS /
    WARN / FAIL) and the doubt map (``r.quality_map``, 1 − local NCC); ``inverse`` (True, or a
    node to fill): also the inverse transform on the moving volume's geometry (``r.inverse``),
    which carries the fixed volume's data onto the moving volume. ``fixed_mask``/``moving_mask``:
    segmentation or labelmap volume nodes replacing the computed lung fields;
    ``initial_transform``: a transform node to start from (fixed -> moving as the moving
    volume's parent would apply it); the result includes it.

    ``transform``, ``jacobian``, ``table``, ``volume``, ``quality_table``, ``quality_map``, ``inverse``:
    nodes to fill instead of new ones, used only if they belong to this pair (an earlier
    result of the same fixed and moving volumes) or to none (new, empty nodes); one that holds
    another pair's result keeps it, a new node is made and the log says so. Inputs are never
    modified, except that the moving volume gets the result as its parent transform when
    ``apply_to_moving`` and it has none. Bad input raises InputError before any node is made.
    """
    fixed_image, moving_image, points = check_inputs(scene, fixed, moving, fixed_landmarks, moving_landmarks)
    model = model if isinstance(model, Model) else load_model(model, device)
    f_pts, m_pts = (points[0], points[1]) if points else (None, None)
    resample = resample or volume is not None
    masks = tuple(labels_of_node(scene, node, volume_node, f"{role} mask '{node.GetName()}'") if node else None
                  for role, node, volume_node in (("fixed", fixed_mask, fixed), ("moving", moving_mask, moving)))
    initial = None
    if initial_transform is not None:
        with tempfile.TemporaryDirectory() as folder:
            initial = read_transform(write_initial_transform(scene, initial_transform, fixed, moving, Path(folder)))
    result = register_images(fixed_image, moving_image, model, device, f_pts, m_pts, progress, warp_moving=resample,
                             refinement=refinement, initial=initial, masks=masks)
    summary = summary_of(result, model, device)
    quality_image = None
    if quality:
        maps = quality_maps(result, fixed_image, moving_image)
        summary["quality"] = quality_summary(result, maps)
        quality_image = maps.residual_image()
    jac = jacobian_image(result)
    landmarks = None
    if points:
        lm = result.landmarks
        landmarks = {"labels": points[2], "fixed_lps": lm["fixed_lps"], "moving_lps": lm["moving_lps"],
                     "before_mm": lm["before_mm"], "network_mm": lm["network_mm"], "used": lm["used"]}
    inverse_field = None
    if inverse is not None and inverse is not False:
        inverse_field, summary["inverse"] = inverse_transform(result)
    return output_nodes(scene, fixed, moving, result.displacement, jac, summary, landmarks, transform, jacobian, table,
                        apply_to_moving, result.warped if resample else None, volume, quality_image, quality_table,
                        quality_map, inverse_field, None if inverse is True else inverse)


def register_sequence_nodes(scene, source, reference: int = 0, points=None, segmentation=None,
                            segmentation_phase: int | None = None, target_phase: int | None = None,
                            model: str | Path | Model | None = None, device: str = "cpu",
                            refinement: RefineConfig | None = DEFAULT_REFINEMENT, progress=None) -> FourDNodes:
    """Register every phase of ``source`` (a Sequence of volumes or a list of volume nodes)
    to phase ``reference``, in-process, and put the results in ``scene``::

        import ProgressiveRegistrationLib as prl
        r = prl.register_sequence_nodes(slicer.mrmlScene, sequenceNode, reference=5)
        r.transforms, r.ventilation, r.table, r.segmentation

    Inputs are never modified. Bad input raises InputError before any node is made.
    """
    with tempfile.TemporaryDirectory(prefix="progreg-4d-") as work:
        job = export_4d_job(scene, source, reference, work, points, segmentation, segmentation_phase, target_phase)
        register_4d_files(job.phase_paths, job.out_dir, job.reference, job.points_path, job.segmentation_path,
                          job.segmentation_phase, model, device, refinement, progress=progress, names=job.names)
        return load_4d_results(scene, job)


def sample_pair_nodes(scene, seed: int = 0):
    """Bundled CT (inhale, fixed) and a simulated exhale (moving) with landmark lists."""
    pair = simulate(read_image(BUNDLED_SAMPLE), seed=seed)
    return (add_volume_node(scene, pair.inhale, "inhale"), add_volume_node(scene, pair.exhale, "exhale"),
            add_points_node(scene, pair.fixed_points_lps, "F"), add_points_node(scene, pair.moving_points_lps, "M"))


def sample_phase_sequence(scene, amplitudes_mm=(0.0, 5.0, 10.0, 15.0)):
    """A Sequence of the bundled CT (inhale, phase 0) and simulated exhales of it with the
    given diaphragm motions: a small 4DCT to try the module on."""
    import slicer

    inhale = read_image(BUNDLED_SAMPLE)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName("sample 4DCT"))
    seq.SetIndexName("phase")
    seq.SetIndexUnit("")  # (a new Sequence's index is "time" in "s")
    seq.SetIndexType(seq.NumericIndex)
    for k, amplitude in enumerate(amplitudes_mm):
        image = inhale if amplitude == 0 else simulate(inhale, seed=k, amplitude_si_mm=amplitude,
                                                        amplitude_ap_mm=amplitude / 3).exhale
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetName(f"sample phase {k}")
        set_volume_from_image(volume, image)
        seq.SetDataNodeAtValue(volume, str(k))
    return seq
