"""The registration engine: two CT images in memory in, a physical transform and its checks out.

Reading files and writing outputs is :mod:`pipeline`'s; this module touches no file except
the model (loaded once by the caller, or the bundled one).

Stages (each timed, each reported to a progress callback):

1. ``crop``: the pair's geometry (:mod:`.geometry`: masks, fields of view, the crops around
   the lungs that both images show), both crops resampled to the model's N³;
2. ``network``: Gaussian gradient magnitude of both, one forward pass -> u (voxels);
3. ``refine`` (optional, :mod:`refine`): a short optimisation of a displacement v added to
   the network's field, on the CT itself, coarse to fine;
4. ``transform``: u (+ v) -> φ(x) - x (LPS mm) on the fixed image's grid or one no coarser
   than the network grid and the refinement's finest grid (:mod:`transforms`);
5. ``jacobian``: det(I + ∂d/∂x) on that grid, folding inside the fixed body mask;
6. ``warp``: the moving image resampled onto the fixed grid through that transform
   (:mod:`warp`: ITK's resampler's values, computed in one compiled kernel);
7. ``landmarks``: fixed landmarks through φ, TRE before, after the network alone, and
   after refinement.

With an initial transform (:mod:`.initial`) the moving image is first resampled through it
onto the fixed grid, and every field from stage 4 on is the initial transform composed with
the registration's; with masks (:func:`checks.given_mask`) the user's lung fields replace the
computed ones (:mod:`.geometry`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core import fields, warp
from ..core.checks import check_overlap, check_pairs, check_volume, given_mask
from ..core.device import pick_device
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import displacement_image, field_transform
from ..core.lungs import ThoraxMasks
from ..core.metrics import summary, tre_mm
from ..core.parallel import side_by_side
from ..core.transforms import displacement_lps, field_at_points, invert_displacement, map_points, output_grid
from ..model.modelfile import Model, load_model
from ..model.preprocess import crop_hu, network_input
from .geometry import PairGeometry, pair_geometry
from .initial import check_initial, compose, pre_align
from .refine import refine
from .refine_config import RefineConfig

log = logging.getLogger(__name__)


@dataclass
class Result:
    geometry: PairGeometry
    out_grid: Grid
    u_vox: torch.Tensor
    displacement: sitk.Image
    jacobian: np.ndarray
    body_mask: np.ndarray
    folding_percent: float
    warped: sitk.Image | None
    seconds: dict
    warnings: list[str]
    fixed_input: torch.Tensor
    moving_input: torch.Tensor
    landmarks: dict | None = None
    #: Per-level record of the refinement (None: the network's field alone).
    refinement: list[dict] | None = None
    #: The fixed image's lung field on ``out_grid`` (bool ``[k, j, i]``).
    lung_mask: np.ndarray | None = None
    #: The moving image's own grid (the geometry's is the pre-aligned image's, on the fixed
    #: grid, when the registration started from an initial transform).
    moving_grid: Grid | None = None

    def transform(self) -> sitk.Transform:
        return field_transform(self.displacement)

    @property
    def fixed_grid(self) -> Grid:
        return self.geometry.fixed_grid

    @property
    def fixed_crop(self) -> Grid:
        return self.geometry.fixed_crop

    @property
    def moving_crop(self) -> Grid:
        return self.geometry.moving_crop


def inverse_transform(result: Result) -> tuple[sitk.Image, dict]:
    """φ⁻¹ as a displacement field on the moving image's grid (subsampled as the transform's grid
    subsamples the fixed image's, no coarser than it): the resampling transform that carries the
    fixed image's data onto the moving image, mapping a moving point y to the fixed point x with
    φ(x) = y (:func:`transforms.invert_displacement`). With its record: the grid, and the
    consistency ``|φ(φ⁻¹(y)) − y|`` over it (mm: mean, 99th percentile, maximum)."""
    target = output_grid(result.moving_grid or result.geometry.moving_grid, result.moving_crop,
                         result.out_grid.spacing_mm)
    t0 = time.perf_counter()
    image, record = invert_displacement(result.displacement, target)
    result.seconds["inverse"] = round(time.perf_counter() - t0, 3)
    return image, {"grid": {"size": list(target.size), "spacing_mm": list(target.spacing_mm)},
                   "consistency_mm": {k: record[k] for k in ("mean_mm", "p99_mm", "max_mm")},
                   "iterations": record["iterations"]}


def inside_images(fixed_lps: np.ndarray, moving_lps: np.ndarray, fixed: Grid, moving: Grid) -> np.ndarray:
    """Which pairs have their fixed point within the fixed image's extent and their moving
    point within the moving image's (bool per pair): a TRE outside them measures nothing."""
    def inside(points, grid):
        idx = grid.points_to_index(np.asarray(points, dtype=np.float64).reshape(-1, 3))
        return np.all((idx >= -0.5) & (idx <= np.asarray(grid.size) - 0.5), axis=1)

    return inside(fixed_lps, fixed) & inside(moving_lps, moving)


#: Fixed-point iterations of :func:`symmetric_forward`'s consensus.
CONSENSUS_ITERATIONS = 3


def symmetric_forward(net: torch.nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    """The network's field from fixed to moving, made consistent with its field from moving to
    fixed: ``(3, N, N, N)`` in crop voxels (fixed crop -> moving crop), on the CPU.

    ``x``: ``(1, 2, N, N, N)`` fixed and moving inputs. The network runs on both orders: ``u``
    (fixed -> moving) and ``u'`` (moving -> fixed). The result is the consensus
    ``s(x) = ½ (u(x) − u'(x + s(x)))`` (fixed-point iteration from ``½ (u − u')``): the
    average of the forward field and the backward field's inverse, to first order. Identical
    inputs give ``u = u'`` and exactly ``s = 0``, whatever the network's own errors (an image
    registered to itself is the identity), and the two directions' errors partly cancel.
    """
    # Two calls of one sample each, not one batch of two: a batch's samples may take other
    # kernels and round differently, and identical inputs must give identical bits.
    forward, backward = (net(inputs.to(device).contiguous(memory_format=torch.channels_last_3d)).float().cpu()[0]
                         .contiguous() for inputs in (x, x.flip(1)))
    s = 0.5 * (forward - backward)
    # u'(x + s) as u'(x) plus the change of its samples: grid_sample at the voxel centres
    # themselves rounds, and s = 0 must stay exactly 0.
    at_centres = fields.warp(backward, torch.zeros_like(backward))
    for _ in range(CONSENSUS_ITERATIONS):
        s = 0.5 * (forward - backward - (fields.warp(backward, s) - at_centres))
    return s.contiguous()


def check_passes(passes: int) -> None:
    """InputError unless the network runs at least once."""
    if passes < 1:
        raise InputError(f"network passes: {passes} (at least 1)")


def network_field(model: Model, fixed_hu: torch.Tensor, moving_hu: torch.Tensor, device, passes: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's field from the fixed to the moving crop, ``(3, N, N, N)`` crop voxels, on the
    CPU, and the first pass's input ``(1, 2, N, N, N)`` (fixed, moving).

    ``fixed_hu``, ``moving_hu``: the two crops, ``(N, N, N)`` HU. ``passes`` > 1 is a cascade:
    each further pass registers the fixed crop to the moving crop warped by the field so far
    ``u``, and its field ``v`` composes exactly: ``u ← v + u(x + v)`` (crop voxels). An aligned pair
    stays exactly the identity: the warped crop is the moving crop plus the change of its
    samples, so a zero field leaves its bits as they are."""
    check_passes(passes)
    first = torch.stack([network_input(fixed_hu, model.synthesis), network_input(moving_hu, model.synthesis)])[None]
    u_vox = symmetric_forward(model.net, first, device)
    if passes > 1:
        at_centres = fields.warp(moving_hu, torch.zeros_like(u_vox))
    for _ in range(passes - 1):
        warped = moving_hu + (fields.warp(moving_hu, u_vox) - at_centres)
        x = torch.stack([first[0, 0], network_input(warped, model.synthesis)])[None]
        u_vox = fields.compose(u_vox, symmetric_forward(model.net, x, device))
    return u_vox, first


def register_images(fixed: sitk.Image, moving: sitk.Image, model: Model | None = None, device: str = "cpu",
                    fixed_points_lps: np.ndarray | None = None, moving_points_lps: np.ndarray | None = None,
                    progress=None, warp_moving: bool = True, refinement: RefineConfig | None = None,
                    fixed_masks: ThoraxMasks | None = None, initial: sitk.Transform | None = None,
                    masks: tuple[sitk.Image | None, sitk.Image | None] = (None, None),
                    mask_names: tuple[str, str] = ("fixed mask", "moving mask"), network_passes: int = 1) -> Result:
    """Register ``moving`` to ``fixed`` (both 3D CT in HU, any geometry).

    ``progress(fraction, message)`` is called at each stage. Landmarks are LPS mm.
    ``refinement``: refine the network's field on the images (:mod:`refine`); None gives the
    network's one-pass result. ``fixed_masks``: :func:`lungs.thorax_masks` of ``fixed``, when
    the caller registers several images to one fixed image. ``initial``: an ITK transform
    (fixed -> moving points) to start from; the result includes it (:mod:`.initial`).
    ``network_passes``: the network's passes (:func:`network_field`; 2 is a cascade of two).
    ``masks``: the user's fixed and moving masks (label maps on any grid of each image's
    frame, non-zero inside), replacing the computed lung fields: the crops, the refinement's
    similarity and the quality checks' region follow them; ``mask_names`` name them in messages.
    """
    check_volume(fixed, "fixed image")
    check_volume(moving, "moving image")
    check_passes(network_passes)
    given = tuple(given_mask(mask, image, name) if mask is not None else None
                  for mask, image, name in zip(masks, (fixed, moving), mask_names))
    moving_grid = Grid.from_image(moving)
    original_moving = moving
    if initial is not None:
        check_initial(initial, fixed, moving, "initial transform")
        moving = pre_align(moving, initial, Grid.from_image(fixed))
        if given[1] is not None:
            given = (given[0], sitk.Resample(given[1], fixed, initial, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    if fixed_points_lps is not None or moving_points_lps is not None:
        if fixed_points_lps is None or moving_points_lps is None:
            raise InputError("landmarks: give both fixed and moving landmarks, or neither")
        check_pairs(fixed_points_lps, moving_points_lps)
    device, notice = pick_device(device)
    notes = [notice] if notice else []
    model = model or load_model(None, device)
    report = progress or (lambda fraction, message: None)
    seconds: dict[str, float] = {}

    def stage(name: str, fraction: float, message: str):
        report(fraction, message)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = round(time.perf_counter() - seconds[name], 3)

    check_overlap(fixed, moving)

    stage("crop", 0.05, "cropping both images around the lungs")
    geometry = pair_geometry(fixed, moving, model.synthesis, fixed_masks, given)
    notes += geometry.notes
    fixed_crop, moving_crop = geometry.fixed_crop, geometry.moving_crop
    fixed_hu, moving_hu = side_by_side(lambda pair: crop_hu(*pair), ((fixed, fixed_crop), (moving, moving_crop)))
    done("crop")

    stage("network", 0.25, f"network forward pass ({model.size}³, {device})")
    with torch.inference_mode():
        u_vox, x = network_field(model, fixed_hu, moving_hu, device, network_passes)
    if not torch.isfinite(u_vox).all():
        raise InputError(f"the network gave non-finite displacements (NaN or Inf) with {model.path}: "
                         "is the model file damaged?")
    done("network")

    refined = None
    if refinement is not None:
        stage("refine", 0.3, "refining the field on the images")
        refined = refine(fixed, moving, fixed_crop, lambda grid: displacement_lps(u_vox, fixed_crop, moving_crop, grid),
                         lambda grid: geometry.similarity_mask_on(grid, refinement.similarity_margin_mm), refinement,
                         lambda fraction, message: report(0.3 + 0.4 * fraction, message), device=device,
                         lungs=geometry.fixed_masks.pleura_on)
        done("refine")

    stage("transform", 0.7, "mapping the field to the fixed image (LPS, mm)")
    fixed_grid = geometry.fixed_grid
    out = output_grid(fixed_grid, fixed_crop, refined.grid.spacing_mm if refined is not None else None)
    disp = displacement_lps(u_vox, fixed_crop, moving_crop, out)
    disp_network = None
    if refined is not None:
        disp_network = disp
        disp = refined.sample_on(out, add=disp_network)
    if initial is not None:
        disp = compose(initial, disp, out)
        disp_network = compose(initial, disp_network, out) if disp_network is not None else None
    if not np.isfinite(disp).all():
        raise InputError("the registration gave non-finite displacements (NaN or Inf); nothing is written")
    disp_image = displacement_image(disp, out)
    done("transform")

    stage("jacobian", 0.75, "Jacobian determinant and folding")
    disp_t = torch.from_numpy(disp).movedim(-1, 0)
    jac = fields.jacobian_determinant(disp_t, out.index_to_lps[:3, :3]).numpy()
    body = geometry.body_on(out)
    folding = fields.folding_percent(torch.from_numpy(jac), torch.from_numpy(body))
    done("jacobian")

    warped = None
    if warp_moving:
        stage("warp", 0.8, "resampling the moving image onto the fixed grid")
        warped = warp.warp_moving(original_moving, fixed_grid, disp_image, -1024.0)
        done("warp")

    result = Result(geometry, out, u_vox, disp_image, jac, body, folding, warped,
                    seconds, notes, x[0, 0], x[0, 1], refinement=refined.levels if refined is not None else None,
                    lung_mask=geometry.lungs_on(out), moving_grid=moving_grid)
    if fixed_points_lps is not None:
        stage("landmarks", 0.95, "landmark TRE")
        predicted = map_points(disp, out, fixed_points_lps)
        before = tre_mm(fixed_points_lps, moving_points_lps)
        after = tre_mm(predicted, moving_points_lps)
        network = after
        if disp_network is not None:
            network = tre_mm(fixed_points_lps + field_at_points(disp_network, out, fixed_points_lps), moving_points_lps)
        used = inside_images(fixed_points_lps, moving_points_lps, fixed_grid, moving_grid)
        if not used.all():
            outside = np.flatnonzero(~used) + 1
            notes.append(f"landmarks: {len(outside)} of {len(used)} pairs lie outside the fixed or the moving image "
                         f"and are left out of the TRE statistics (pairs {', '.join(map(str, outside[:20]))}"
                         f"{', …' if len(outside) > 20 else ''}); {int(used.sum())} pairs are used")
            log.warning(notes[-1])
        result.landmarks = {"fixed_lps": np.asarray(fixed_points_lps), "moving_lps": np.asarray(moving_points_lps),
                            "predicted_lps": predicted, "before_mm": before, "network_mm": network, "after_mm": after,
                            "used": used}
        done("landmarks")
    for note in notes:
        if not note.startswith("landmarks:"):  # logged when found
            log.warning(note)
    report(1.0, "registered")
    return result


def summary_of(result: Result, model: Model, device: str) -> dict:
    s = {"folding_percent": result.folding_percent, "seconds": result.seconds, "model": model.path,
         "device": device, "warnings": result.warnings,
         "grid": {"network_size": model.size, "transform_size": list(result.out_grid.size),
                  "transform_spacing_mm": list(result.out_grid.spacing_mm)},
         "jacobian": {"min": float(result.jacobian[result.body_mask].min()) if result.body_mask.any() else None,
                      "max": float(result.jacobian[result.body_mask].max()) if result.body_mask.any() else None}}
    s["refinement"] = {"levels": result.refinement} if result.refinement is not None else None
    if result.landmarks is not None:
        used = result.landmarks["used"]
        for key in ("before", "network", "after"):
            s[f"tre_{key}_mm"] = summary(result.landmarks[f"{key}_mm"][used])
        s["landmarks"] = {"pairs": int(used.size), "used": int(used.sum()),
                          "outside_images": [int(i) + 1 for i in np.flatnonzero(~used)]}
    return s
