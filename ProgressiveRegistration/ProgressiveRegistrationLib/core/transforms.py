"""From the network's voxel field to a physical transform, and ITK transform files.

The network predicts ``u`` on the fixed crop's N³ grid, in voxels, pointing into the
moving crop's N³ grid. With ``G_f``/``G_m`` the crops' index-to-LPS maps, the resampling
transform (fixed -> moving, LPS mm) is (docs/CONVENTIONS.md)::

    φ(x) = G_m(G_f⁻¹(x) + u(G_f⁻¹(x)))

and what ITK stores is ``φ(x) - x`` sampled on an output grid (its images and files:
:mod:`.itk_fields`). Outside the fixed crop,
``u`` is extended by its border values, so ``φ`` is continuous everywhere and far from
the crop tends to the crop-to-crop affine ``G_m ∘ G_f⁻¹`` plus a constant.
"""

from __future__ import annotations

import warnings

import numpy as np
import SimpleITK as sitk
import torch

from . import fields
from .grid import Grid
from .itk_fields import displacement_image, field_transform
from .jit import numba


def output_grid(fixed: Grid, crop: Grid, finest_mm: tuple[float, float, float] | None = None) -> Grid:
    """The fixed image's grid, subsampled by the largest integer stride per axis that keeps
    the spacing no coarser than the network grid's, nor than ``finest_mm`` (the spacing of
    the refinement's finest grid) when given, so that no detail of the field is lost."""
    target = np.asarray(crop.spacing_mm) if finest_mm is None else np.minimum(crop.spacing_mm, finest_mm)
    stride = tuple(max(1, int(np.floor(c / f + 1e-6))) for c, f in zip(target, fixed.spacing_mm))
    return fixed.subsampled(stride)


@torch.inference_mode()
def displacement_lps(u_vox: torch.Tensor, fixed_crop: Grid, moving_crop: Grid, out: Grid,
                     slab: int = 16) -> np.ndarray:
    """``φ(x) - x`` on ``out`` as an array ``[k, j, i, c]`` (c = L, P, S; mm; float32).

    ``u_vox``: ``(3, N, N, N)`` network output on the fixed crop grid, in its voxels.
    """
    out_to_crop = fixed_crop.lps_to_index @ out.index_to_lps
    if numba is not None and np.allclose(out_to_crop[:3, :3], np.diag(np.diag(out_to_crop[:3, :3])), atol=1e-9):
        return _displacement_axis_aligned(u_vox, fixed_crop, moving_crop, out, out_to_crop)
    return _displacement_general(u_vox, fixed_crop, moving_crop, out, slab)


def _affine_part(fixed_crop: Grid, moving_crop: Grid, out: Grid) -> np.ndarray:
    """``M·F⁻¹·O − O`` (4x4): the crop-to-crop affine's displacement at output index ``p``.
    One crop for both images (an image registered to itself) gives exactly zero: the
    refinement amplifies even 1e-14 mm of rounding where the images are nearly flat."""
    crop_to_crop = np.eye(4) if fixed_crop == moving_crop else moving_crop.index_to_lps @ fixed_crop.lps_to_index
    return (crop_to_crop - np.eye(4)) @ out.index_to_lps


def _displacement_axis_aligned(u_vox: torch.Tensor, fixed_crop: Grid, moving_crop: Grid, out: Grid,
                               out_to_crop: np.ndarray) -> np.ndarray:
    """The usual case: the crop is cut from the fixed image along its axes, so output axis
    a maps onto crop axis a alone and each voxel's trilinear weights are a product of three
    per-axis weights, computed once per axis; one compiled pass then writes the result.

    With ``q = A·p`` (output index -> crop index, ``A`` diagonal), ``x = O·p`` and the
    moving crop's ``M``: ``φ(x) − x = M·u(q) + (M·A − O)·p``, in float64 per voxel.
    """
    u = np.ascontiguousarray(u_vox.detach().to("cpu", torch.float32).numpy())
    n_crop = u.shape[:0:-1]  # (N_i, N_j, N_k)
    cells = []
    for a, n in enumerate(out.size):
        cells += fields.axis_cells(out_to_crop[a, a], out_to_crop[a, 3], n, n_crop[a])
    m = moving_crop.index_to_lps
    result = np.empty((*out.shape_zyx, 3), dtype=np.float32)
    fields._separable_kernel(u, *cells, np.ascontiguousarray(m[:3, :3]), _affine_part(fixed_crop, moving_crop, out),
                             result, False, result)
    return result


def _displacement_general(u_vox: torch.Tensor, fixed_crop: Grid, moving_crop: Grid, out: Grid,
                          slab: int) -> np.ndarray:
    """Any crop orientation: every output point mapped and sampled (grid_sample, float64),
    in slabs of ``slab`` output slices to bound memory."""
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


def field_at_points(disp_lps: np.ndarray, grid: Grid, points_lps: np.ndarray) -> np.ndarray:
    """A ``[k, j, i, 3]`` displacement field on ``grid`` at ``(n, 3)`` LPS points (trilinear, as
    ITK's displacement-field transform interpolates it; border values beyond the grid)."""
    # Only the points' cells are read (a landmark set has hundreds of points, the field
    # millions of voxels), in float64.
    size = np.asarray(grid.size)
    q = np.clip(grid.points_to_index(np.asarray(points_lps, dtype=np.float64)), 0, size - 1)  # (n, 3): x, y, z
    lower = np.minimum(np.floor(q).astype(np.int64), np.maximum(size - 2, 0))
    upper, frac = np.minimum(lower + 1, size - 1), q - lower
    out = np.zeros((len(q), 3))
    for corner in np.ndindex(2, 2, 2):  # (x, y, z) of the cell's corner
        at = np.where(corner, upper, lower)
        weight = np.prod(np.where(corner, frac, 1.0 - frac), axis=1)
        out += weight[:, None] * disp_lps[at[:, 2], at[:, 1], at[:, 0]]
    return out


def map_points(disp_lps: np.ndarray, grid: Grid, points_lps: np.ndarray) -> np.ndarray:
    """``(n, 3)`` LPS points through the resampling transform of a ``[k, j, i, 3]`` field on
    ``grid``, as ITK's ``DisplacementFieldTransform`` maps them (``transform_points`` of
    ``field_transform``): plus the trilinear displacement within half a voxel of the grid,
    unchanged beyond it; without building the transform's float64 copy of the whole field."""
    points = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    q = grid.points_to_index(points)
    inside = np.all((q >= -0.5) & (q <= np.asarray(grid.size) - 0.5), axis=1)
    return points + np.where(inside[:, None], field_at_points(disp_lps, grid, points), 0.0)


def crop_affine(fixed_crop: Grid, moving_crop: Grid) -> np.ndarray:
    """The 4x4 LPS map ``G_m ∘ G_f⁻¹`` (what φ is for u = 0)."""
    return moving_crop.index_to_lps @ fixed_crop.lps_to_index


def _field_at(disp_image: sitk.Image):
    """``d(points_lps)`` for ``(3, n)`` LPS points: the field of ``disp_image``, trilinear, in float64,
    with its border values beyond its grid."""
    source = Grid.from_image(disp_image)
    view = sitk.GetArrayViewFromImage(disp_image)
    if view.dtype == np.float64:
        # The image's own pixels (read, never written): no copy of a field of millions of voxels.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            d = torch.from_numpy(view).movedim(-1, 0)
    else:
        d = torch.from_numpy(view.astype(np.float64)).movedim(-1, 0)
    to_index = torch.from_numpy(source.lps_to_index)

    def d_at(points_lps: torch.Tensor, _keep=disp_image) -> torch.Tensor:  # _keep: the pixels' owner
        q = to_index[:3, :3] @ points_lps + to_index[:3, 3:]
        return fields.sample(d, q, padding_mode="border")

    return d_at


@torch.inference_mode()
def invert_displacement(disp_image: sitk.Image, target: Grid, iterations: int = 50, tolerance_mm: float = 1e-3,
                        residual_map: bool = False) -> tuple:
    """The inverse of the resampling transform ``φ(x) = x + d(x)`` of ``disp_image``, as a
    displacement field ``e`` on ``target``: ``φ(y + e(y)) = y``.

    Fixed-point iteration ``e ← −d(y + e)`` (a contraction where ``|∂d| < 1``, which a
    fold-free registration satisfies), in float64, ``d`` interpolated trilinearly with its
    border values beyond its grid; each point is iterated until its own step is below
    ``tolerance_mm`` (most converge in a few steps; the few where ``|∂d|`` is large take
    the rest), at most ``iterations`` times. Returns ``e`` (LPS mm, vector float64 image on
    ``target``) and its inverse-consistency record: ``{"iterations"`` (of the slowest point),
    ``"mean_mm", "max_mm", "p99_mm"}`` of ``|φ(y + e(y)) − y|`` over ``target``; with
    ``residual_map``, also that residual at every voxel of ``target`` (``[k, j, i]`` float32, mm).
    """
    d_at = _field_at(disp_image)
    y = fields.grid_points(target, target.index_to_lps).reshape(-1, 3).T  # (3, n): every voxel's LPS position
    e = -d_at(y)
    active = torch.arange(y.shape[1])  # the points still moving
    done = 1
    while done < iterations and active.numel():
        step = -d_at(y[:, active] + e[:, active])
        change = (step - e[:, active]).abs().amax(dim=0)
        e[:, active] = step
        active, done = active[change >= tolerance_mm], done + 1
    residual = (e + d_at(y + e)).norm(dim=0)
    record = {"iterations": done, "mean_mm": float(residual.mean()), "max_mm": float(residual.max()),
              "p99_mm": float(torch.quantile(residual[:: max(1, residual.numel() // 1_000_000)], 0.99))}
    e_zyx = e.T.reshape(*target.shape_zyx, 3).numpy()
    if residual_map:
        return displacement_image(e_zyx, target), record, residual.reshape(target.shape_zyx).to(torch.float32).numpy()
    return displacement_image(e_zyx, target), record


def resample_labels(labels: sitk.Image, disp_image: sitk.Image, target: Grid) -> sitk.Image:
    """A label map carried onto ``target`` through the resampling field ``disp_image``
    (``out(x) = labels(x + d(x))``), nearest neighbour, 0 outside, pixel type kept."""
    return sitk.Resample(labels, target.reference_image(labels.GetPixelID()), field_transform(disp_image),
                         sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
