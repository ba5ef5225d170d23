"""From the network's voxel field to a physical transform, and ITK transform files.

The network predicts ``u`` on the fixed crop's N³ grid, in voxels, pointing into the
moving crop's N³ grid. With ``G_f``/``G_m`` the crops' index-to-LPS maps, the resampling
transform (fixed -> moving, LPS mm) is (SPEC.md §2)::

    φ(x) = G_m(G_f⁻¹(x) + u(G_f⁻¹(x)))

and what ITK stores is ``φ(x) - x`` sampled on an output grid. Outside the fixed crop,
``u`` is extended by its border values, so ``φ`` is continuous everywhere and far from
the crop tends to the crop-to-crop affine ``G_m ∘ G_f⁻¹`` plus a constant.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import fields
from .errors import InputError
from .geometry import Grid
from .images import atomic_path

TRANSFORM_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".h5")


def output_grid(fixed: Grid, crop: Grid) -> Grid:
    """The fixed image's grid, subsampled by the largest integer stride per axis that keeps
    the spacing no coarser than the network grid's (so no detail of ``u`` is lost)."""
    stride = tuple(max(1, int(np.floor(c / f + 1e-6))) for c, f in zip(crop.spacing_mm, fixed.spacing_mm))
    return fixed.subsampled(stride)


@torch.inference_mode()
def displacement_lps(u_vox: torch.Tensor, fixed_crop: Grid, moving_crop: Grid, out: Grid,
                     slab: int = 16) -> np.ndarray:
    """``φ(x) - x`` on ``out`` as an array ``[k, j, i, c]`` (c = L, P, S; mm; float32).

    ``u_vox``: ``(3, N, N, N)`` network output on the fixed crop grid, in its voxels.
    Computed in slabs of ``slab`` output slices to bound memory.
    """
    u = u_vox.detach().to("cpu", torch.float64)
    f_inv = torch.as_tensor(fixed_crop.lps_to_index)
    m_mat = torch.as_tensor(moving_crop.index_to_lps)
    o_mat = torch.as_tensor(out.index_to_lps)
    nx, ny, nz = out.size
    result = np.empty((nz, ny, nx, 3), dtype=np.float32)
    jj, ii = torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64), indexing="ij")
    def affine(m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # (4, 4) on (3, ...) points
        return (m[:3, :3] @ p.reshape(3, -1) + m[:3, 3:]).reshape(p.shape)

    for z0 in range(0, nz, slab):
        kk = torch.arange(z0, min(nz, z0 + slab), dtype=torch.float64)
        idx = torch.stack([ii.expand(len(kk), -1, -1), jj.expand(len(kk), -1, -1),
                           kk[:, None, None].expand(-1, ny, nx)])  # (3, k, j, i)
        x = affine(o_mat, idx)
        q = affine(f_inv, x)
        phi = affine(m_mat, q + fields.sample(u, q, padding_mode="border"))
        result[z0:z0 + len(kk)] = (phi - x).movedim(0, -1).numpy()
    return result


def displacement_image(disp_lps: np.ndarray, grid: Grid) -> sitk.Image:
    """An ITK displacement-field image (vector float64, LPS) from ``[k, j, i, 3]`` mm."""
    image = sitk.GetImageFromArray(np.asarray(disp_lps, dtype=np.float64), isVector=True)
    grid.apply_to(image)
    return image


def write_transform(disp_image: sitk.Image, path: str | os.PathLike) -> None:
    """Write a displacement field atomically as .nrrd/.nii.gz/.mha (image) or .h5 (transform).

    All are resampling-direction fields in LPS that SimpleITK reads back as a
    DisplacementFieldTransform and Slicer loads as a grid transform.
    """
    name = str(path).lower()
    if not name.endswith(TRANSFORM_SUFFIXES):
        raise InputError(f"{path}: unknown transform format (use one of {', '.join(TRANSFORM_SUFFIXES)})")
    tmp, final = atomic_path(path)
    try:
        if name.endswith(".h5"):
            tx = sitk.DisplacementFieldTransform(sitk.Cast(disp_image, sitk.sitkVectorFloat64))
            sitk.WriteTransform(tx, tmp)
        else:
            image = sitk.Cast(disp_image, sitk.sitkVectorFloat32)
            if name.endswith(".nrrd"):
                # Slicer >= 5.10 reads this key; ITK ignores it.
                image.SetMetaData("displacement field type", "resampling")
                image.SetMetaData("intent_code", "1006")
            sitk.WriteImage(image, tmp, True)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Any ITK transform file (.h5, .tfm, .txt, .mat) or a displacement-field image."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such transform file")
    name = p.name.lower()
    try:
        if name.endswith((".h5", ".hdf5", ".tfm", ".txt", ".mat", ".xfm")):
            return sitk.ReadTransform(str(p))
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise InputError(f"{path}: not a readable transform ({str(err).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != image.GetDimension() or image.GetDimension() != 3:
        raise InputError(f"{path}: a displacement field needs 3 components per voxel in 3D")
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def read_displacement_field(path: str | os.PathLike) -> sitk.Image:
    """The displacement-field image (LPS, vector float64) of a transform file we wrote."""
    tx = read_transform(path)
    try:
        return sitk.DisplacementFieldTransform(tx).GetDisplacementField()
    except (RuntimeError, TypeError):
        raise InputError(f"{path}: not a displacement-field transform") from None


def transform_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """Apply an ITK transform to ``(n, 3)`` LPS points."""
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in np.asarray(points_lps)])


def crop_affine(fixed_crop: Grid, moving_crop: Grid) -> np.ndarray:
    """The 4x4 LPS map ``G_m ∘ G_f⁻¹`` (what φ is for u = 0)."""
    return moving_crop.index_to_lps @ fixed_crop.lps_to_index
