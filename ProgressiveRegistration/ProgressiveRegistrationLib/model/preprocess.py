"""What happens to a CT before the network, the same in training and at inference.

Each image is cropped around its own lung field (a margin around the lung mask's LPS
bounding box; the whole image if no lungs are found), resampled linearly to the network's
N³ grid with the LPS axes (:func:`grid.box_grid_lps`: whatever the images' storage, the
network sees both in one orientation), and turned into the network's input: the Gaussian
gradient magnitude of HU / ``intensity_scale_hu``. Training also needs the paper's
scanner-bore disc on that grid (the loss mask).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from ..core import fields
from ..core.grid import Grid, box_grid_lps, resample
from ..core.lungs import PADDING_HU, ThoraxMasks, lung_bounds_lps
from .config import SynthesisConfig

#: Radius of the scanner-bore disc in a 512x512 slice, in pixels (paper Sec. II-F).
BORE_RADIUS_PX = 250.0
BORE_SLICE_PX = 512.0


def lung_crop(image: sitk.Image, cfg: SynthesisConfig, masks: ThoraxMasks | None = None,
              seen_by: ThoraxMasks | None = None) -> tuple[Grid, bool]:
    """(the N³ grid of ``image``'s lung crop, whether a lung field was found).

    ``masks``: the image's :func:`lungs.thorax_masks`, when the caller has them already.
    ``seen_by``: the other image's masks of a pair: only the lungs inside its field of view
    count (:func:`lungs.lung_bounds_lps`). Without ``cfg.crop_to_lungs`` (or without lungs)
    the crop is the whole image.
    """
    bounds = lung_bounds_lps(image, cfg.lung_margin_mm, masks, seen_by) if cfg.crop_to_lungs else None
    return box_grid_lps(*(bounds or Grid.from_image(image).extent_lps()), cfg.size), bounds is not None


def crop_hu(image: sitk.Image, grid: Grid) -> torch.Tensor:
    """``image`` resampled (linear, -1024 HU outside) onto ``grid``, values below -1024 HU
    raised to it: float32 ``[k, j, i]``.

    Nothing real is darker than air; below it lie only a scanner's outside value (-2048,
    -3024), whose edge against the field of view would be the strongest gradient the
    network sees."""
    return torch.from_numpy(sitk.GetArrayFromImage(resample(image, grid))).clamp_min_(PADDING_HU)


def network_input(volume_hu: torch.Tensor, cfg: SynthesisConfig) -> torch.Tensor:
    """Gaussian gradient magnitude of HU / ``intensity_scale_hu`` (per voxel)."""
    return fields.gaussian_gradient_magnitude(volume_hu / cfg.intensity_scale_hu, cfg.gradient_sigma_vox)


def bore_mask_zyx(image_grid: Grid, target: Grid) -> np.ndarray:
    """Scanner-bore disc of the paper, evaluated on ``target`` (array ``[k, j, i]``, float32).

    The disc has radius 250/512 of the image's in-plane field of view and is centred on the
    centre of each axial slice of ``image_grid`` (the original CT), so it scales with the
    actual geometry. Its axis is the slice normal.
    """
    nx, ny, _ = image_grid.size
    centre_ijk = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 0.0])
    fov_mm = min(nx * image_grid.spacing_mm[0], ny * image_grid.spacing_mm[1])
    radius_mm = BORE_RADIUS_PX / BORE_SLICE_PX * fov_mm
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in target.size], indexing="ij"), -1).reshape(-1, 3)
    # In-plane offset from the slice centre, measured in the original image's axes.
    rel = image_grid.points_to_index(target.points_to_lps(idx)) - centre_ijk
    rel_mm = rel[:, :2] * np.asarray(image_grid.spacing_mm[:2])
    inside = (rel_mm**2).sum(1) <= radius_mm**2
    return inside.reshape(target.size).transpose(2, 1, 0).astype(np.float32)
