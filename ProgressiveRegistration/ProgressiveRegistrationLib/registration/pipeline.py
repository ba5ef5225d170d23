"""Files in, files out: read images and landmarks, run the engine, write every output.

``progreg register`` and the Slicer module's background process are this module's
:func:`register_files`, ``progreg register-4d`` is :func:`register_4d_files`; nothing is
left in the output folder if anything fails. The output folder is checked (and locked)
before any work: :class:`atomic.OutputFolder`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import SimpleITK as sitk

from .. import __version__
from ..core.atomic import OutputFolder, concurrent, write_text
from ..core.checks import check_labels
from ..core.device import pick_device
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import read_transform, write_transform
from ..core.transforms import resample_labels
from ..io.dicom_reg import SOP_CLASS_UID as DICOM_REG_SOP_CLASS
from ..io.dicom_reg import series_reference, write_registration
from ..io.images import list_dicom_series, phase_names, phase_order, read_image, read_series, write_image
from ..io.landmarks import read_landmarks, read_point_pairs
from ..model.modelfile import Model, load_model
from .engine import inverse_transform, register_images, summary_of
from .fourd import check_phases, check_segmentation, register_phases
from .outputs import TRANSFORM_FORMATS, fourd_writers, registration_writers, transform_writer
from .refine_config import DEFAULT as DEFAULT_REFINEMENT
from .refine_config import RefineConfig
from .report import fourd_report_writers, image_info, report_writers
from .runlog import COMMAND, LOG_NAME, RunLog
from .tolerances import load_tolerances

#: The DICOM registration object's file in the output folder.
DICOM_REG_NAME = "registration.dcm"


def register_files(fixed: str | Path, moving: str | Path, out: str | Path, fixed_landmarks=None, moving_landmarks=None,
                   model: str | Path | Model | None = None, device: str = "cpu", size: int | None = None,
                   fmt: str = "nrrd", series: tuple[str | None, str | None] = (None, None), progress=None,
                   refinement: RefineConfig | None = DEFAULT_REFINEMENT, write_warped: bool = True,
                   write_overview: bool = True, moving_segmentation=None, report: bool = True,
                   fixed_segmentation=None, tolerances=None, write_inverse: bool = False, fixed_mask=None,
                   moving_mask=None, initial_transform=None, dicom_reg: bool = False) -> dict:
    """``progreg register`` as a function: read, register, write every output into ``out``.

    Returns the summary (also written as ``summary.json``). ``size`` overrides the model's
    grid. ``refinement``: None for the network's one-pass field. ``write_warped`` /
    ``write_overview``: the warped moving image and the overview figure (a caller that shows
    the transform itself, such as Slicer, needs neither). ``moving_segmentation``: a label map
    on the moving image's grid, written on the fixed grid as ``moving_segmentation.nrrd``.
    ``report``: the quality checks (:mod:`quality`) into ``summary["quality"]``, ``report.html``,
    ``quality.nrrd`` and ``inverse_consistency.nrrd``; ``fixed_segmentation`` (a label map on the
    fixed grid) adds contour agreement with the carried ``moving_segmentation``; ``tolerances``:
    a YAML/JSON file of check tolerances. ``write_inverse``: also ``inverse_transform.<fmt>``,
    the inverse on the moving image's grid (:func:`engine.inverse_transform`), with its
    consistency in ``summary["inverse"]``. ``fixed_mask``/``moving_mask``: label maps (files)
    replacing the computed lung fields (:func:`engine.register_images`); ``initial_transform``:
    an ITK transform file (fixed -> moving) that the result starts from and includes.
    ``dicom_reg``: also ``registration.dcm``, a DICOM Deformable Spatial Registration object
    referencing both series (:mod:`io.dicom_reg`; both inputs must be DICOM series).
    """
    tolerance_values = load_tolerances(tolerances)  # a bad file is refused before any work
    with OutputFolder(out) as folder, RunLog() as run_log:
        return _register_files(fixed, moving, folder, fixed_landmarks, moving_landmarks, model, device, size, fmt,
                               series, run_log.progress(progress), refinement, write_warped, write_overview,
                               moving_segmentation, report, fixed_segmentation, tolerance_values, tolerances, run_log,
                               write_inverse, (fixed_mask, moving_mask), initial_transform, dicom_reg)


#: With a report, the registration's own progress runs to this fraction, the report to WRITING_FROM.
REPORT_FROM = 0.85
#: Writing the outputs runs from this fraction to 1 ("done" is said when they are written).
WRITING_FROM = 0.95


def _until(progress, report: bool):
    """``progress`` with the registration's fractions scaled into [0, REPORT_FROM] (with a
    report) or [0, WRITING_FROM], so that the whole run's progress never goes back."""
    if progress is None:
        return None
    end = REPORT_FROM if report else WRITING_FROM
    return lambda fraction, message: progress(end * fraction, message)


def _write(folder: OutputFolder, writers: dict, progress) -> None:
    if progress:
        progress(WRITING_FROM, f"writing {len(writers)} files")
    folder.write(writers)
    if progress:
        progress(1.0, "done")


def _register_files(fixed, moving, folder: OutputFolder, fixed_landmarks, moving_landmarks, model, device, size, fmt,
                    series, progress, refinement, write_warped, write_overview, moving_segmentation, report,
                    fixed_segmentation, tolerance_values, tolerances_file, run_log: RunLog,
                    write_inverse: bool = False, mask_files=(None, None), initial_transform=None,
                    dicom_reg: bool = False) -> dict:
    if fmt not in TRANSFORM_FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(TRANSFORM_FORMATS)}")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("give both --fixed-landmarks and --moving-landmarks, or neither")
    device, notice = pick_device(device)
    if notice and progress:
        progress(0.0, notice)
    references = None
    if dicom_reg:  # refused before any work when the inputs are not DICOM series
        references = (series_reference(fixed, series[0], "--dicom-reg (fixed image)"),
                      series_reference(moving, series[1], "--dicom-reg (moving image)"))
    read_notes: list[str] = []  # what the readers found (a DICOM series' missing slices), for summary.json
    fixed_img = read_image(fixed, series[0], "fixed image", notes=read_notes)
    moving_img = read_image(moving, series[1], "moving image", notes=read_notes)
    fixed_grid, moving_grid = Grid.from_image(fixed_img), Grid.from_image(moving_img)
    labels = None
    if moving_segmentation is not None:
        labels = read_image(moving_segmentation, what="--moving-segmentation")
        check_labels(labels, moving_img, f"--moving-segmentation {moving_segmentation}")
    fixed_labels = None
    if fixed_segmentation is not None:
        if labels is None:
            raise InputError("--fixed-segmentation needs --moving-segmentation (the contours to compare it with)")
        fixed_labels = read_image(fixed_segmentation, what="--fixed-segmentation")
        check_labels(fixed_labels, fixed_img, f"--fixed-segmentation {fixed_segmentation}")
    mask_names = tuple(f"--{role}-mask {path}" for role, path in zip(("fixed", "moving"), mask_files))
    masks = tuple(read_image(path, what=name, check=False) if path is not None else None
                  for path, name in zip(mask_files, mask_names))
    initial = read_transform(initial_transform) if initial_transform is not None else None
    fixed_pts = moving_pts = None
    point_labels: list[str] = []
    if fixed_landmarks is not None:
        fixed_pts, moving_pts, point_labels = read_point_pairs(fixed_landmarks, moving_landmarks,
                                                               fixed_grid, moving_grid)
    model = (model if isinstance(model, Model) else load_model(model, device)).with_size(size)
    result = register_images(fixed_img, moving_img, model, device, fixed_pts, moving_pts, _until(progress, report),
                             warp_moving=write_warped, refinement=refinement, initial=initial, masks=masks,
                             mask_names=mask_names)
    result.warnings[:0] = read_notes
    summary = summary_of(result, model, device)
    summary["inputs"] = {"fixed": image_info(fixed, fixed_img, series[0]), "moving": image_info(moving, moving_img, series[1])}
    for key, path in (("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks),
                      ("fixed_segmentation", fixed_segmentation), ("moving_segmentation", moving_segmentation),
                      ("fixed_mask", mask_files[0]), ("moving_mask", mask_files[1]),
                      ("initial_transform", initial_transform)):
        if path is not None:
            summary["inputs"][key] = str(path)  # the report records each file with its SHA-256
    summary["command_line"] = command_line()
    summary["model_meta"] = model.meta
    extra = {}
    if write_inverse:
        if progress:
            progress(REPORT_FROM if report else WRITING_FROM, "the inverse transform on the moving image's grid")
        inverse, summary["inverse"] = inverse_transform(result)
        extra[f"inverse_transform.{fmt}"] = transform_writer(lambda p: write_transform(inverse, p), fmt)
    if references is not None:
        extra[DICOM_REG_NAME] = concurrent(lambda p: write_registration(p, result.displacement, *references,
                                                                        __version__))
        summary["dicom_reg"] = {"file": DICOM_REG_NAME, "sop_class_uid": DICOM_REG_SOP_CLASS,
                                "frame_of_reference_uid": references[0].frame_of_reference_uid,
                                "source_frame_of_reference_uid": references[1].frame_of_reference_uid}
    on_fixed = None
    if labels is not None:
        on_fixed = resample_labels(labels, result.displacement, result.fixed_grid)
        extra["moving_segmentation.nrrd"] = concurrent(lambda p: write_image(on_fixed, p))
    if report:
        if progress:
            progress(REPORT_FROM, "quality checks and report")
        t0 = time.perf_counter()
        contours = (fixed_labels, on_fixed) if fixed_labels is not None else None
        extra.update(report_writers(result, summary, fixed_img, moving_img, point_labels, tolerance_values,
                                    tolerances_file, contours))
        summary["seconds"]["quality"] = round(time.perf_counter() - t0, 3)
    extra[LOG_NAME] = lambda p: write_text(p, run_log.text(summary))
    writers = registration_writers(result, summary, fixed_img, moving_img, point_labels, fmt, write_warped,
                                   write_overview, extra)
    _write(folder, writers, progress)
    return summary


def command_line() -> list[str]:
    """The command as it was typed (for the report's provenance): ``progreg ARGS``, or the
    Python program that called the library (``python -m ProgressiveRegistrationLib`` runs as
    its ``__main__.py``, which is ``progreg``)."""
    if COMMAND.get() is not None:
        return list(COMMAND.get())
    if not sys.argv or not sys.argv[0]:
        return []
    program = Path(sys.argv[0])
    if program.name == "__main__.py" and program.parent.name == "ProgressiveRegistrationLib":
        return ["progreg", *sys.argv[1:]]
    return [program.name, *sys.argv[1:]]


def read_phases(paths: list, notes: list[str] | None = None) -> tuple[list[sitk.Image], list[str], str]:
    """The images of ``register-4d``'s PHASE arguments, in order: files, or DICOM folders,
    where a folder holding several series (a 4DCT export) expands to its series in phase
    order (:func:`images.phase_order`). Returns (images, names, how the order was decided).
    Phases whose DICOM PatientIDs differ are refused."""
    images, names, patients, rules = [], [], [], []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = list_dicom_series(p)
            if not found:
                raise InputError(f"{p}: no DICOM series found in this directory")
            ordered, rule = phase_order(found) if len(found) > 1 else (found, "one series")
            rules.append(f"{p}: {rule}")
            for s, name in zip(ordered, phase_names(ordered)):
                images.append(read_series(s, f"phase {name}", notes))
                names.append(name)
                patients.append(s.patient_id)
        else:
            images.append(read_image(p, what=f"phase {p}", notes=notes))
            names.append(p.name)
            patients.append("")
    ids = sorted({pid for pid in patients if pid})
    if len(ids) > 1:
        raise InputError(f"the phases belong to different patients (DICOM PatientID {', '.join(ids)})")
    return images, names, "; ".join(rules) or "as given"


def register_4d_files(phases: list, out: str | Path, reference: int = 0, points=None, segmentation=None,
                      segmentation_phase: int | None = None, model: str | Path | Model | None = None,
                      device: str = "cpu", refinement: RefineConfig | None = DEFAULT_REFINEMENT, fmt: str = "nrrd",
                      progress=None, names: list[str] | None = None, report: bool = True, tolerances=None) -> dict:
    """``progreg register-4d`` as a function: every phase registered to ``phases[reference]``
    (:mod:`fourd`), every output written into ``out`` (nothing, if anything fails).
    ``names``: the phases' names in the outputs (default: file names or series descriptions).
    ``report``: ``report.html`` (one page for all phases) and each phase's own report and maps."""
    tolerance_values = load_tolerances(tolerances)
    with OutputFolder(out) as folder, RunLog() as run_log:
        return _register_4d_files(phases, folder, reference, points, segmentation, segmentation_phase, model, device,
                                  refinement, fmt, run_log.progress(progress), names, report, tolerance_values,
                                  tolerances, run_log)


def _register_4d_files(phases, folder: OutputFolder, reference, points, segmentation, segmentation_phase, model,
                       device, refinement, fmt, progress, names, report, tolerance_values, tolerances_file,
                       run_log: RunLog) -> dict:
    if fmt not in TRANSFORM_FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(TRANSFORM_FORMATS)}")
    read_notes: list[str] = []
    images, found_names, order = read_phases(phases, read_notes)
    # A file per phase is hashed for the report; phases expanded from a DICOM folder are named only.
    phase_paths = list(phases) if len(phases) == len(images) and all(Path(p).is_file() for p in phases) else None
    if names is not None and len(names) != len(images):
        raise InputError(f"--names: {len(names)} names for {len(images)} phases")
    names = list(names) if names is not None else found_names
    check_phases(images, reference)
    reference_grid = Grid.from_image(images[reference])
    points_lps = point_labels = None
    if points is not None:
        lm = read_landmarks(points)
        points_lps, point_labels = lm.to_lps(grid=reference_grid), lm.labels
    labels = None
    if segmentation is not None:
        labels = read_image(segmentation, what=f"--segmentation {segmentation}")
        # Checked here too (register_phases checks it for its own callers): before the model loads.
        check_segmentation(images, labels, reference if segmentation_phase is None else segmentation_phase,
                           f"--segmentation {segmentation}")
    device, notice = pick_device(device)
    if notice and progress:
        progress(0.0, notice)
    model = model if isinstance(model, Model) else load_model(model, device)
    t0 = time.perf_counter()
    result = register_phases(images, reference, model, device, refinement, names, points_lps, labels,
                             segmentation_phase, _until(progress, report))
    summary = {"reference": reference, "names": names, "order": order, "model": model.path, "device": device,
               "refinement": None if refinement is None else {"levels_mm": list(refinement.levels_mm),
                                                              "iterations": list(refinement.iterations)},
               "grid": {"network_size": model.size, "transform_size": list(result.grid.size),
                        "transform_spacing_mm": list(result.grid.spacing_mm)},
               "points": 0 if points_lps is None else len(points_lps),
               "segmentation_phase": None if labels is None else (reference if segmentation_phase is None
                                                                  else segmentation_phase),
               "seconds": {"register": round(time.perf_counter() - t0, 3)},
               "command_line": command_line(), "model_meta": model.meta,
               "inputs": {"phases": [image_info(p, im) for p, im in zip(phase_paths, images)] if phase_paths else [],
                          **({"points": str(points)} if points is not None else {}),
                          **({"segmentation": str(segmentation)} if segmentation is not None else {})},
               "warnings": read_notes + [f"{phase.name}: {note}" for phase in result.phases if phase.result is not None
                                         for note in phase.result.warnings]}
    extra = {}
    if report:
        if progress:
            progress(REPORT_FROM, "quality checks and reports")
        t1 = time.perf_counter()
        extra = fourd_report_writers(result, summary, images, names, tolerance_values, tolerances_file)
        summary["seconds"]["quality"] = round(time.perf_counter() - t1, 3)
    extra[LOG_NAME] = lambda p: write_text(p, run_log.text(summary))
    _write(folder, fourd_writers(result, summary, images[reference], point_labels, fmt, extra), progress)
    return summary
