"""4DCT: every breathing phase registered to one reference phase, and what follows from it.

Phase ``k`` is registered as the moving image onto the reference phase ``K`` (the fixed
image), so each phase's transform ``φ_k`` maps a reference point to its position in phase
``k`` (resampling direction, LPS mm) and lives on the reference's grid. From them:

* motion: ``φ_k(p)`` for points ``p`` of the reference (trajectories, e.g. a tumour);
* ventilation (:mod:`ventilation`): ``det J_k − 1`` and the density method, on the reference;
* lung volume per phase: ∫ det J_k over the reference lung;
* contours: a label map of one phase carried to every phase; into phase ``k`` it needs
  ``φ_k⁻¹`` (:func:`transforms.invert_displacement`), whose inverse-consistency error is reported.

The model is loaded once, the reference's masks computed once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..core.checks import check_labels, check_volume
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import displacement_image, transform_points
from ..core.lungs import thorax_masks
from ..core.transforms import invert_displacement, resample_labels
from ..model.modelfile import Model
from .engine import Result, register_images
from .refine_config import RefineConfig
from .ventilation import hu_ventilation, jacobian_ventilation, lung_volume_change, on_grid, smoothed


@dataclass
class PhaseResult:
    """One phase against the reference. Arrays are ``[k, j, i]`` on the transform's grid
    (the reference's, subsampled); the reference phase itself has the identity."""

    index: int
    name: str
    displacement: sitk.Image
    jacobian: np.ndarray
    ventilation_jacobian: np.ndarray
    ventilation_hu: np.ndarray
    volume: dict
    displacement_mm: dict
    folding_percent: float
    seconds: float
    result: Result | None = None
    points_lps: np.ndarray | None = None
    labels: sitk.Image | None = None
    inverse: dict | None = None

    @property
    def is_reference(self) -> bool:
        return self.result is None

    def row(self) -> dict:
        """The phase's line of ``phases.csv``."""
        row = {"phase": self.index, "name": self.name, "reference": int(self.is_reference),
               "lung_volume_ml": round(self.volume["phase_ml"], 2), "volume_change_ml": round(self.volume["change_ml"], 2),
               "volume_change_percent": round(self.volume["change_percent"], 3),
               "mean_displacement_mm": round(self.displacement_mm["mean"], 3),
               "p95_displacement_mm": round(self.displacement_mm["p95"], 3),
               "folding_percent": round(self.folding_percent, 4), "seconds": round(self.seconds, 2)}
        if self.inverse is not None:
            row["inverse_consistency_mean_mm"] = round(self.inverse["mean_mm"], 4)
            row["inverse_consistency_max_mm"] = round(self.inverse["max_mm"], 4)
        return row


@dataclass
class FourD:
    reference: int
    grid: Grid
    lungs: np.ndarray
    phases: list[PhaseResult] = field(default_factory=list)


def check_phases(phases: list[sitk.Image], reference: int) -> None:
    if len(phases) < 2:
        raise InputError(f"register-4d needs at least two phases, got {len(phases)}")
    if not 0 <= reference < len(phases):
        raise InputError(f"--reference {reference}: out of range (phases 0 to {len(phases) - 1})")


def check_segmentation(phases: list[sitk.Image], labels: sitk.Image, labels_phase: int, what: str) -> None:
    """``labels`` must be a label map on the grid of ``phases[labels_phase]``, an existing phase."""
    if not 0 <= labels_phase < len(phases):
        raise InputError(f"--segmentation-phase {labels_phase}: out of range (phases 0 to {len(phases) - 1})")
    check_labels(labels, phases[labels_phase], what)


def _displacement_stats(disp: np.ndarray, lungs: np.ndarray) -> dict:
    magnitude = np.linalg.norm(disp[lungs], axis=-1) if lungs.any() else np.zeros(1)
    return {"mean": float(magnitude.mean()), "p95": float(np.percentile(magnitude, 95))}


def register_phases(phases: list[sitk.Image], reference: int, model: Model, device: str = "cpu",
                    refinement: RefineConfig | None = None, names: list[str] | None = None,
                    points_lps: np.ndarray | None = None, labels: sitk.Image | None = None, labels_phase: int | None = None,
                    progress: Callable[[float, str], None] | None = None) -> FourD:
    """Register every phase to ``phases[reference]``; see the module docstring.

    ``points_lps``: ``(n, 3)`` points of the reference phase. ``labels``: a label map on the
    grid of ``phases[labels_phase]`` (default: the reference). ``progress(fraction, message)``.
    """
    check_phases(phases, reference)
    names = names or [f"phase {k}" for k in range(len(phases))]
    for k, image in enumerate(phases):
        check_volume(image, names[k])
    labels_phase = reference if labels_phase is None else labels_phase
    if labels is not None:
        check_segmentation(phases, labels, labels_phase, "segmentation")
    report = progress or (lambda fraction, message: None)
    fixed = phases[reference]
    masks = thorax_masks(fixed)
    others = [k for k in range(len(phases)) if k != reference]
    done: dict[int, PhaseResult] = {}
    grid = lungs = reference_hu = None
    for n, k in enumerate(others):
        t0 = time.perf_counter()

        def stage(fraction, message, n=n, k=k):
            report((n + fraction) / len(others) * 0.95, f"{names[k]} ({n + 1}/{len(others)}): {message}")

        r = register_images(fixed, phases[k], model, device, progress=stage, warp_moving=False,
                            refinement=refinement, fixed_masks=masks)
        grid, lungs = r.out_grid, r.lung_mask
        disp = sitk.GetArrayViewFromImage(r.displacement)
        if reference_hu is None:  # the same grid for every phase: the reference's smoothed HU once
            reference_hu = on_grid(smoothed(fixed), grid)
        vent_hu = hu_ventilation(fixed, phases[k], r.displacement, lungs, reference_hu=reference_hu)
        pts = transform_points(r.transform(), points_lps) if points_lps is not None else None
        done[k] = PhaseResult(k, names[k], r.displacement, r.jacobian, jacobian_ventilation(r.jacobian, lungs), vent_hu,
                              lung_volume_change(r.jacobian, lungs, grid), _displacement_stats(disp, lungs),
                              r.folding_percent, time.perf_counter() - t0, r, pts)
    zero = np.zeros((*grid.shape_zyx, 3), np.float32)
    ones = np.ones(grid.shape_zyx, np.float32)
    done[reference] = PhaseResult(reference, names[reference], displacement_image(zero, grid), ones,
                                  jacobian_ventilation(ones, lungs), np.zeros(grid.shape_zyx, np.float32),
                                  lung_volume_change(ones, lungs, grid), {"mean": 0.0, "p95": 0.0}, 0.0, 0.0, None,
                                  None if points_lps is None else np.asarray(points_lps, dtype=np.float64))
    result = FourD(reference, grid, lungs, [done[k] for k in range(len(phases))])
    if labels is not None:
        report(0.95, "carrying the segmentation to every phase")
        propagate(result, phases, labels, labels_phase)
    report(1.0, "every phase registered")
    return result


def propagate(result: FourD, phases: list[sitk.Image], labels: sitk.Image, labels_phase: int) -> None:
    """Set every phase's ``labels``: the label map of ``labels_phase`` carried to the
    reference through ``φ_j`` (no inverse needed), and from there into each other phase
    through ``φ_k⁻¹`` (fixed-point inverse, its consistency error in ``inverse``)."""
    reference = result.reference
    ref_grid = Grid.from_image(phases[reference])
    on_reference = labels if labels_phase == reference else \
        resample_labels(labels, result.phases[labels_phase].displacement, ref_grid)
    for phase in result.phases:
        if phase.index == labels_phase:
            phase.labels = labels
        elif phase.is_reference:
            phase.labels = on_reference
        else:
            target = Grid.from_image(phases[phase.index])
            forward = Grid.from_image(phase.displacement)
            stride = tuple(max(1, int(round(f / t))) for f, t in zip(forward.spacing_mm, target.spacing_mm))
            inverse, phase.inverse = invert_displacement(phase.displacement, target.subsampled(stride))
            phase.labels = resample_labels(on_reference, inverse, target)
