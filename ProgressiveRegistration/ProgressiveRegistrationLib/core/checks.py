"""Input checks shared by every entry point: volumes, point pairs, overlap, grid sizes.

Each raises :class:`~.errors.InputError` with a message for a person; nothing here reads
or writes files.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .grid import Grid


def check_volume(image: sitk.Image, what: str) -> None:
    """Raise InputError unless ``image`` is a finite, non-constant 3D scalar volume."""
    if image.GetDimension() != 3:
        raise InputError(f"{what}: expected a 3D volume, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"{what}: a 3D volume needs at least 2 voxels along every axis, got size {image.GetSize()}")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{what}: the image contains NaN or infinite values")
    if arr.min() == arr.max():
        raise InputError(f"{what}: the image is empty (every voxel is {arr.min()})")


def check_pairs(fixed: np.ndarray, moving: np.ndarray, what: str = "landmarks") -> None:
    """Two point lists that must pair up one to one."""
    if len(fixed) != len(moving):
        raise InputError(f"{what}: {len(fixed)} fixed but {len(moving)} moving points; they must pair up")


def check_overlap(fixed: sitk.Image, moving: sitk.Image) -> None:
    """The two images' voxel hulls must overlap somewhere in LPS (else the origins are wrong)."""
    f_lo, f_hi = Grid.from_image(fixed).bounding_box_lps()
    m_lo, m_hi = Grid.from_image(moving).bounding_box_lps()
    if np.any(f_hi < m_lo) or np.any(m_hi < f_lo):
        raise InputError("the moving image does not overlap the fixed image at all (check their origins)")


def check_network_size(size: int, levels: int, what: str = "--size") -> None:
    """A network grid N must halve ``levels - 1`` times down to whole voxels."""
    step = 2 ** (levels - 1)
    if size <= 0 or size % step:
        raise InputError(f"{what} {size}: must be a positive multiple of {step} (the network has {levels} levels)")


def check_labels(labels: sitk.Image, image: sitk.Image, what: str) -> None:
    """A label map must be an integer image on its phase's grid (same voxels, same place)."""
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: a label map must be a 3D scalar image")
    if sitk.GetArrayViewFromImage(labels).dtype.kind not in "iub":
        raise InputError(f"{what}: a label map must hold integer labels, not {labels.GetPixelIDTypeAsString()}")
    a, b = Grid.from_image(labels), Grid.from_image(image)
    if a.size != b.size or not np.allclose(a.index_to_lps, b.index_to_lps, atol=1e-3):
        raise InputError(f"{what}: the label map is not on the grid of its phase image "
                         f"(size {a.size} against {b.size}, or another spacing, origin or direction)")


#: Share of a user's mask that must lie within its image: less is the mask of another image.
MASK_INSIDE_MIN = 0.5


def given_mask(mask: sitk.Image, image: sitk.Image, what: str) -> sitk.Image:
    """A user's mask as a uint8 image (1 inside) on ``image``'s grid (nearest neighbour).

    ``mask``: a 3D label map of any grid in the image's frame: every non-zero label is inside
    (a float image: values of at least 0.5). Refused with one line: not a 3D scalar image; no
    voxel inside; less than :data:`MASK_INSIDE_MIN` of it within the image (another patient's
    or another frame of reference's mask); nothing of it left on the image's grid.
    """
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: a mask must be a 3D scalar image (a label map)")
    values = sitk.GetArrayViewFromImage(mask)
    inside = values >= 0.5 if values.dtype.kind == "f" else values != 0
    count = int(np.count_nonzero(inside))
    if not count:
        raise InputError(f"{what}: the mask is empty (no voxel inside)")
    binary = sitk.GetImageFromArray(inside.astype(np.uint8))
    binary.CopyInformation(mask)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    within = sitk.Resample(ones, binary, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    share = np.count_nonzero(inside & (sitk.GetArrayViewFromImage(within) > 0)) / count
    if share < MASK_INSIDE_MIN:
        raise InputError(f"{what}: only {share:.0%} of the mask lies within its image (the mask of another image, "
                         "or another frame of reference?)")
    on_image = sitk.Resample(binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(on_image).any():
        raise InputError(f"{what}: no voxel of the mask falls on the image's grid (a mask thinner than a voxel?)")
    return on_image
