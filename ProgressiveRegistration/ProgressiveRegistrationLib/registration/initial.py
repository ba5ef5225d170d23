"""An initial transform: a user's alignment (rigid, affine, a displacement field, any ITK
transform) that the registration starts from and its result includes.

The initial transform ``T`` maps fixed points to moving points (the resampling direction of
every transform here, docs/CONVENTIONS.md, "Transform direction"). The moving image is
resampled through ``T`` onto the fixed image's grid (:func:`pre_align`), the pair is registered
as usual, giving ``u`` from the fixed image to the pre-aligned one, and the result is the
composition ``φ(x) = T(x + u(x))`` sampled at the output grid's points by ITK itself
(:func:`compose`): exact at every grid point for any transform ITK can evaluate, so that
``transform.nrrd`` alone carries the moving image onto the fixed one.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..core import fields
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import displacement_image, field_transform
from ..core.lungs import PADDING_HU

#: Grid step (mm) on which an initial transform's invertibility is checked.
CHECK_SPACING_MM = 8.0
#: A Jacobian determinant at or below this anywhere in the fixed image: not invertible there.
MIN_JACOBIAN = 0.05
#: Share of the fixed image that the initial transform must carry into the moving image.
MIN_INSIDE = 0.05


def check_initial(initial: sitk.Transform, fixed: sitk.Image, moving: sitk.Image, what: str) -> None:
    """Refuse, with one line, an initial transform that folds or collapses the fixed image's
    space (Jacobian determinant ≤ :data:`MIN_JACOBIAN` somewhere in it: a singular or
    reflecting matrix, a folding field) or carries less than :data:`MIN_INSIDE` of the fixed
    image into the moving image (the transform of another pair, or its inverse)."""
    grid = Grid.from_image(fixed)
    stride = tuple(max(1, int(CHECK_SPACING_MM // s)) for s in grid.spacing_mm)
    coarse = grid.subsampled(stride)
    try:
        disp = sitk.TransformToDisplacementField(initial, sitk.sitkVectorFloat64, coarse.size, coarse.origin_lps,
                                                 coarse.spacing_mm, coarse.direction)
    except RuntimeError as err:
        raise InputError(f"{what}: ITK cannot evaluate this transform ({str(err).strip().splitlines()[-1]})") from None
    d = torch.from_numpy(sitk.GetArrayFromImage(disp)).movedim(-1, 0)
    if not torch.isfinite(d).all():
        raise InputError(f"{what}: the transform gives non-finite positions in the fixed image")
    if min(coarse.size) >= 2:
        jac = fields.jacobian_determinant(d, coarse.index_to_lps[:3, :3], compiled=False)
        if float(jac.min()) <= MIN_JACOBIAN:
            share = float((jac <= MIN_JACOBIAN).float().mean())
            raise InputError(f"{what}: the transform is not invertible over the fixed image (Jacobian determinant "
                             f"≤ {MIN_JACOBIAN} at {share:.0%} of it, minimum {float(jac.min()):.3g}): a singular "
                             "or mirroring matrix, or a folding field")
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, coarse.reference_image(sitk.sitkUInt8), initial, sitk.sitkNearestNeighbor, 0,
                           sitk.sitkUInt8)
    share = float(sitk.GetArrayViewFromImage(inside).mean())
    if share < MIN_INSIDE:
        raise InputError(f"{what}: the transform carries only {share:.1%} of the fixed image into the moving image "
                         "(the transform of another pair, or its inverse? It must map fixed points to moving points)")


def pre_align(moving: sitk.Image, initial: sitk.Transform, fixed_grid: Grid) -> sitk.Image:
    """``moving`` resampled through ``initial`` onto the fixed image's grid (linear, float32,
    :data:`lungs.PADDING_HU` outside the moving image: padding, not anatomy, for the masks)."""
    return sitk.Resample(moving, fixed_grid.reference_image(), initial, sitk.sitkLinear, PADDING_HU,
                         sitk.sitkFloat32)


def compose(initial: sitk.Transform, disp_lps: np.ndarray, grid: Grid) -> np.ndarray:
    """``T(x + u(x)) − x`` at the points of ``grid`` (``[k, j, i, 3]`` LPS mm, float32), from
    ``u`` = ``disp_lps`` on ``grid`` and ``T`` = ``initial``.

    ITK evaluates the composite: a displacement-field transform returns its own samples at
    its grid points, and ``T`` is evaluated exactly where they lead.
    """
    composite = sitk.CompositeTransform([initial, field_transform(displacement_image(disp_lps, grid))])
    full = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, grid.size, grid.origin_lps,
                                             grid.spacing_mm, grid.direction)
    return sitk.GetArrayFromImage(full).astype(np.float32)
