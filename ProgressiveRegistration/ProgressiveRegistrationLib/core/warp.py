"""The moving image resampled onto the fixed grid through a registration's displacement field.

``warp_moving(moving, fixed_grid, disp)`` gives what ITK's resampler gives through a
``DisplacementFieldTransform`` of ``disp`` with linear interpolation (the same values: edge
voxels replicated up to half a voxel outside the moving image, ``default_value`` beyond;
integer types clamped and truncated), but faster: the field lies on a subsampled copy of
the fixed grid (:func:`transforms.output_grid`), so its interpolation weights are known per
row instead of searched per point, and the whole loop is one compiled kernel over both
cores (numba). Without numba it is ITK's resampler itself.

Arrays are ``[k, j, i]``; the field is LPS mm, resampling direction (fixed -> moving).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .grid import Grid
from .itk_fields import field_transform
from .jit import numba, prange


def _kernel(vol, disp, stride, fixed_to_moving, lps_to_moving, default_value, clamp, out):
    """``out[k, j, i] = vol(A·p + b + B·disp(p / stride))``, trilinear, ITK's border rules.

    ``clamp``: (low, high) of an integer output type, or None for a float output.
    """
    nk, nj, ni = out.shape
    mk, mj, mi = vol.shape
    ck, cj, ci = disp.shape[0], disp.shape[1], disp.shape[2]
    A, B = fixed_to_moving, lps_to_moving
    integer = clamp is not None
    lo_val, hi_val = (clamp[0], clamp[1]) if clamp is not None else (0.0, 0.0)
    for k in prange(nk):
        k0, fk = _cell(k / stride[2], ck)
        k1 = min(k0 + 1, ck - 1)
        row = np.empty((ci, 3))  # the field along one fixed row, interpolated in j and k once
        for j in range(nj):
            j0, fj = _cell(j / stride[1], cj)
            j1 = min(j0 + 1, cj - 1)
            for n in range(ci):
                for c in range(3):
                    row[n, c] = ((disp[k0, j0, n, c] * (1 - fj) + disp[k0, j1, n, c] * fj) * (1 - fk)
                                 + (disp[k1, j0, n, c] * (1 - fj) + disp[k1, j1, n, c] * fj) * fk)
            for i in range(ni):
                i0, fi = _cell(i / stride[0], ci)
                i1 = min(i0 + 1, ci - 1)
                x = row[i0, 0] * (1 - fi) + row[i1, 0] * fi
                y = row[i0, 1] * (1 - fi) + row[i1, 1] * fi
                z = row[i0, 2] * (1 - fi) + row[i1, 2] * fi
                qi = A[0, 0] * i + A[0, 1] * j + A[0, 2] * k + A[0, 3] + B[0, 0] * x + B[0, 1] * y + B[0, 2] * z
                qj = A[1, 0] * i + A[1, 1] * j + A[1, 2] * k + A[1, 3] + B[1, 0] * x + B[1, 1] * y + B[1, 2] * z
                qk = A[2, 0] * i + A[2, 1] * j + A[2, 2] * k + A[2, 3] + B[2, 0] * x + B[2, 1] * y + B[2, 2] * z
                if qi < -0.5 or qj < -0.5 or qk < -0.5 or qi > mi - 0.5 or qj > mj - 0.5 or qk > mk - 0.5:
                    out[k, j, i] = default_value
                    continue
                a0, ti = _cell(min(max(qi, 0.0), mi - 1.0), mi)
                b0, tj = _cell(min(max(qj, 0.0), mj - 1.0), mj)
                c0, tk = _cell(min(max(qk, 0.0), mk - 1.0), mk)
                a1, b1, c1 = min(a0 + 1, mi - 1), min(b0 + 1, mj - 1), min(c0 + 1, mk - 1)
                v00 = vol[c0, b0, a0] * (1 - ti) + vol[c0, b0, a1] * ti
                v01 = vol[c0, b1, a0] * (1 - ti) + vol[c0, b1, a1] * ti
                v10 = vol[c1, b0, a0] * (1 - ti) + vol[c1, b0, a1] * ti
                v11 = vol[c1, b1, a0] * (1 - ti) + vol[c1, b1, a1] * ti
                v = (v00 * (1 - tj) + v01 * tj) * (1 - tk) + (v10 * (1 - tj) + v11 * tj) * tk
                if integer:
                    v = min(max(v, lo_val), hi_val)
                out[k, j, i] = v


def _cell(position, n):
    """(lower neighbour, fraction) of a continuous index in [0, n − 1] on an axis of n samples."""
    lower = min(int(position), max(n - 2, 0))
    return lower, (min(position - lower, 1.0) if n > 1 else 0.0)


if numba is not None:
    _cell = numba.njit(inline="always")(_cell)
    _kernel = numba.njit(parallel=True, cache=True)(_kernel)


def _subsampling(fixed_grid: Grid, disp: sitk.Image) -> np.ndarray | None:
    """The integer stride of ``disp``'s grid over ``fixed_grid``, or None if it is not a
    subsampled copy covering the whole fixed image."""
    stride = np.rint(np.asarray(disp.GetSpacing()) / np.asarray(fixed_grid.spacing_mm)).astype(int)
    same = (np.all(stride >= 1)
            and np.allclose(disp.GetOrigin(), fixed_grid.origin_lps, atol=1e-4)
            and np.allclose(disp.GetDirection(), fixed_grid.direction, atol=1e-6)
            and np.allclose(disp.GetSpacing(), stride * np.asarray(fixed_grid.spacing_mm), rtol=1e-6)
            and np.all((np.asarray(disp.GetSize()) - 1) * stride >= np.asarray(fixed_grid.size) - 1))
    return stride if same else None


def warp_moving(moving: sitk.Image, fixed_grid: Grid, disp: sitk.Image, default_value: float = -1024.0,
                compiled: bool = True) -> sitk.Image:
    """``moving(φ(x))`` on ``fixed_grid`` for the displacement field ``disp`` (φ(x) − x, LPS mm).

    The moving image's pixel type is kept. ``compiled=False`` (or no numba, or a field not
    on a subsampled copy of the fixed grid) uses ITK's resampler, the reference.
    """
    stride = _subsampling(fixed_grid, disp)
    if not compiled or numba is None or stride is None:
        return sitk.Resample(moving, fixed_grid.reference_image(moving.GetPixelID()), field_transform(disp), sitk.sitkLinear,
                             default_value, moving.GetPixelID())
    vol = sitk.GetArrayViewFromImage(moving)
    field = sitk.GetArrayViewFromImage(disp).astype(np.float64, copy=False)
    mov = Grid.from_image(moving)
    out = np.empty(fixed_grid.shape_zyx, dtype=vol.dtype)
    info = np.iinfo(vol.dtype) if np.issubdtype(vol.dtype, np.integer) else None
    clamp = (float(info.min), float(info.max)) if info is not None else None
    _kernel(vol, field, stride.astype(np.float64), mov.lps_to_index @ fixed_grid.index_to_lps,
            np.ascontiguousarray(mov.lps_to_index[:3, :3]), float(default_value), clamp, out)
    warped = sitk.GetImageFromArray(out)
    fixed_grid.apply_to(warped)
    return warped
