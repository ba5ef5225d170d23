"""Dense displacement fields on regular grids, in torch.

Shapes and units:

* A volume is ``(C, D, H, W)`` or ``(D, H, W)``, indexed ``[k, j, i]`` (z, y, x).
* A voxel displacement field ``u_vox`` is ``(3, D, H, W)``; channel 0/1/2 is the x/y/z
  (i/j/k) component in voxels of the grid it lives on.
* A point map ``p_vox`` has the same layout and holds absolute continuous indices.
* Sampling is trilinear with ``align_corners=True``: index 0 is the first voxel centre
  and index n-1 the last, as in ITK.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .jit import numba, prange


def identity_vox(shape_zyx: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(3, D, H, W)`` map of each voxel's own index (x, y, z)."""
    d, h, w = shape_zyx
    z, y, x = torch.meshgrid(
        torch.arange(d, device=device, dtype=dtype),
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([x, y, z])


def grid_points(grid, index_to: np.ndarray, device=None) -> torch.Tensor:
    """The 4x4 affine ``index_to`` applied to every voxel index ``(i, j, k)`` of ``grid`` (a
    :class:`grid.Grid`): ``(D, H, W, 3)`` float64 on ``device`` (``grid.index_to_lps`` gives
    the voxels' LPS positions)."""
    ijk = identity_vox(grid.shape_zyx, device, torch.float64).movedim(0, -1)
    m = torch.as_tensor(index_to, dtype=torch.float64, device=device)
    return ijk @ m[:3, :3].T + m[:3, 3]


def is_axis_aligned(index_map: np.ndarray, atol: float = 1e-9) -> bool:
    """Whether a 4x4 index-to-index map takes each axis onto the same axis alone (its linear
    part diagonal): then trilinear sampling through it is separable, see :func:`resample_separable`."""
    lin = np.asarray(index_map, dtype=np.float64)[:3, :3]
    return bool(np.allclose(lin, np.diag(np.diag(lin)), atol=atol * max(1.0, np.abs(lin).max())))


def axis_cells(scale: float, offset: float, n_out: int, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trilinear cells along one axis of an axis-aligned map ``q = scale · n + offset`` from
    ``n_out`` output samples onto ``n_src`` source samples, clamped to the source ('border',
    ``align_corners=True``): (lower, upper) int64 neighbours and the float64 fraction."""
    q = np.clip(scale * np.arange(n_out) + offset, 0.0, n_src - 1)
    lower = np.minimum(np.floor(q).astype(np.int64), max(n_src - 2, 0))
    return lower, np.minimum(lower + 1, n_src - 1), q - lower


def _corners(u, c, a0, a1, b0, b1, c0, c1, tk, tj, ti):
    """Trilinear interpolation of plane ``c`` of ``u`` (``(C, D, H, W)``) between the 8 corners
    of one cell (``a``: k, ``b``: j, ``c``: i neighbours; ``t``: fractions)."""
    return (((u[c, a0, b0, c0] * (1 - ti) + u[c, a0, b0, c1] * ti) * (1 - tj)
             + (u[c, a0, b1, c0] * (1 - ti) + u[c, a0, b1, c1] * ti) * tj) * (1 - tk)
            + ((u[c, a1, b0, c0] * (1 - ti) + u[c, a1, b0, c1] * ti) * (1 - tj)
               + (u[c, a1, b1, c0] * (1 - ti) + u[c, a1, b1, c1] * ti) * tj) * tk)


def _separable_kernel(u, i0, i1, fi, j0, j1, fj, k0, k1, fk, m, affine, base, add, out):
    """``out[k, j, i, r] = (base[k, j, i, r] if add) + Σ_c m[r, c]·u_c + affine[r]·(i, j, k, 1)``
    with the three planes ``u_c`` of ``u`` (``(3, D, H, W)``) trilinear at the cells of
    :func:`axis_cells` along i, j and k: resampling (``m = I``, ``affine = 0``) and the
    transform's displacement (:func:`.transforms.displacement_lps`) in one pass."""
    nk, nj, ni = out.shape[:3]
    for k in prange(nk):
        a0, a1, tk = k0[k], k1[k], fk[k]
        for j in range(nj):
            b0, b1, tj = j0[j], j1[j], fj[j]
            for i in range(ni):
                c0, c1, ti = i0[i], i1[i], fi[i]
                v0 = _corners(u, 0, a0, a1, b0, b1, c0, c1, tk, tj, ti)
                v1 = _corners(u, 1, a0, a1, b0, b1, c0, c1, tk, tj, ti)
                v2 = _corners(u, 2, a0, a1, b0, b1, c0, c1, tk, tj, ti)
                for r in range(3):
                    value = (m[r, 0] * v0 + m[r, 1] * v1 + m[r, 2] * v2
                             + affine[r, 0] * i + affine[r, 1] * j + affine[r, 2] * k + affine[r, 3])
                    out[k, j, i, r] = base[k, j, i, r] + value if add else value


if numba is not None:
    _corners = numba.njit(inline="always")(_corners)
    _separable_kernel = numba.njit(parallel=True, cache=True)(_separable_kernel)


def resample_separable(values: torch.Tensor, index_map: np.ndarray, shape_zyx: tuple[int, int, int],
                       add: np.ndarray | None = None) -> torch.Tensor:
    """Trilinear samples of ``values`` (``(D, H, W, C)``) at every voxel ``p = (i, j, k)`` of a
    ``shape_zyx`` grid, at the source index ``index_map · p`` (4x4 and axis-aligned,
    :func:`is_axis_aligned`), clamped to the source grid (grid_sample's 'border',
    ``align_corners=True``): ``(D', H', W', C)`` float32 on ``values``' device; ``add``: a
    ``(D', H', W', 3)`` float32 array added to the samples (CPU, three channels).

    The weights of an axis-aligned map are a product of one weight per axis, computed once
    per axis: on the CPU with numba one compiled pass writes the result; elsewhere it is
    three 1-D interpolations, each two row gathers and a lerp. Both take a fraction of
    ``grid_sample``'s time and need no array of sample positions; the same numbers as
    ``grid_sample`` to float rounding.
    """
    m = np.asarray(index_map, dtype=np.float64)
    cells = [axis_cells(m[2 - d, 2 - d], m[2 - d, 3], shape_zyx[d], values.shape[d]) for d in range(3)]  # k, j, i
    if values.device.type == "cpu" and numba is not None and values.shape[3] == 3:
        planes = np.ascontiguousarray(values.detach().to(torch.float32).permute(3, 0, 1, 2).numpy())
        out = np.empty((*shape_zyx, 3), np.float32)
        base = out if add is None else np.ascontiguousarray(add, dtype=np.float32)
        (k0, k1, fk), (j0, j1, fj), (i0, i1, fi) = cells
        _separable_kernel(planes, i0, i1, fi, j0, j1, fj, k0, k1, fk, np.eye(3), np.zeros((3, 4)), base,
                          add is not None, out)
        return torch.from_numpy(out)
    if add is not None:
        raise ValueError("resample_separable: `add` is for CPU tensors")
    out = values.to(torch.float32)
    # Shrinking axes first keeps the intermediate arrays small.
    for dim in sorted(range(3), key=lambda d: shape_zyx[d] / values.shape[d]):
        lower, upper, frac = cells[dim]
        shape = [1] * out.dim()
        shape[dim] = shape_zyx[dim]
        weight = torch.as_tensor(frac, dtype=torch.float32, device=values.device).reshape(shape)
        lo = out.index_select(dim, torch.as_tensor(lower, device=values.device))
        hi = out.index_select(dim, torch.as_tensor(upper, device=values.device))
        out = lo.lerp_(hi, weight)
    return out


def _normalise(p_vox: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """``(3, ...)`` voxel indices (x, y, z) -> grid_sample's ``(..., 3)`` in [-1, 1]."""
    d, h, w = shape_zyx
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)],
                         device=p_vox.device, dtype=p_vox.dtype)
    return (p_vox.movedim(0, -1) * scale - 1.0)


def sample(volume: torch.Tensor, p_vox: torch.Tensor, mode: str = "bilinear",
           padding_mode: str = "border") -> torch.Tensor:
    """Sample ``volume`` (``(C, D, H, W)`` or ``(D, H, W)``) at points ``p_vox`` (``(3, ...)``).

    Returns ``(C, ...)`` (or ``(...)`` for a 3D input). ``mode='bilinear'`` is trilinear in
    3D; ``padding_mode`` is 'border' (clamp), 'zeros' or 'reflection'.
    """
    squeeze = volume.dim() == 3
    vol = volume[None, None] if squeeze else volume[None]
    out_shape = p_vox.shape[1:]
    grid = _normalise(p_vox.reshape(3, 1, 1, -1), vol.shape[-3:])[None].to(vol.dtype)
    out = F.grid_sample(vol, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    out = out.reshape(vol.shape[1], *out_shape)
    return out[0] if squeeze else out


@functools.lru_cache(maxsize=8)
def _identity_normalised(shape_zyx: tuple[int, int, int], device: str, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample coordinates of every voxel of a grid, ``(1, D, H, W, 3)``."""
    return _normalise(identity_vox(shape_zyx, device, dtype), shape_zyx)[None]


def warp(volume: torch.Tensor, u_vox: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """``volume(x + u(x))`` on ``u``'s grid: pull-back warp, as ITK resampling does.

    ``volume`` and ``u_vox`` may have different resolutions of the same extent only if
    ``u_vox`` is expressed in ``volume``'s voxels; usually both share one grid.
    """
    shape = tuple(u_vox.shape[1:])
    squeeze = volume.dim() == 3
    vol = volume[None, None] if squeeze else volume[None]
    d, h, w = vol.shape[-3:]
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)], dtype=u_vox.dtype,
                         device=u_vox.device)
    if tuple(vol.shape[-3:]) == shape:
        base = _identity_normalised(shape, str(u_vox.device), u_vox.dtype)
        grid = torch.addcmul(base, u_vox.movedim(0, -1)[None], scale)
    else:
        grid = _normalise(identity_vox(shape, u_vox.device, u_vox.dtype) + u_vox, tuple(vol.shape[-3:]))[None]
    out = F.grid_sample(vol, grid.to(vol.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)[0]
    return out[0] if squeeze else out


def compose(u_outer: torch.Tensor, u_inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``outer ∘ inner``: ``x -> inner(x) -> outer(inner(x))``.

    ``u(x) = u_inner(x) + u_outer(x + u_inner(x))``; both fields on the same grid, voxels.
    Outside the grid, ``u_outer`` is extended by its border values.
    """
    return u_inner + warp(u_outer, u_inner)


def resize_field(u_vox: torch.Tensor, shape_zyx: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly resize a field to another resolution of the same extent, values unchanged.

    Used for the network's per-level outputs, whose values are voxels of the full N³ grid
    at every level (docs/CONVENTIONS.md), so only the sampling changes. Cell-centred alignment
    (``align_corners=False``), matching average-pool downsampling.
    """
    if tuple(u_vox.shape[-3:]) == tuple(shape_zyx):
        return u_vox
    batched = u_vox if u_vox.dim() == 5 else u_vox[None]
    out = F.interpolate(batched, size=tuple(shape_zyx), mode="trilinear", align_corners=False)
    return out if u_vox.dim() == 5 else out[0]


def downsample(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool ``(N, C, D, H, W)`` or ``(C, D, H, W)`` by an integer factor."""
    if factor == 1:
        return volume
    batched = volume if volume.dim() == 5 else volume[None]
    out = F.avg_pool3d(batched, factor)
    return out if volume.dim() == 5 else out[0]


def jacobian_determinant(disp: torch.Tensor, index_to_units: np.ndarray | torch.Tensor | None = None,
                         compiled: bool = True) -> torch.Tensor:
    """det(I + ∂d/∂x) of a displacement field ``disp`` (``(3, D, H, W)``).

    ``disp`` components are in the units of ``x`` (mm for a physical field, voxels for a
    voxel field). ``index_to_units`` is the 3x3 matrix from a grid index step to those
    units (``D @ diag(spacing)`` for LPS mm; identity, the default, for voxels). Derivatives
    are central differences (one-sided at the edges), so a linear field is exact.

    A CPU field that needs no gradient goes through one compiled pass over the voxels
    (numba, both cores; ~10x faster than the tensor expression at 257x257x130) when numba
    is installed and ``compiled`` is true; the tensor expression below is the reference.
    """
    inv = np.eye(3) if index_to_units is None else np.linalg.inv(np.asarray(index_to_units, dtype=np.float64))
    if numba is not None and compiled and disp.device.type == "cpu" and not disp.requires_grad \
            and min(disp.shape[1:]) >= 2:
        field = disp.detach().movedim(0, -1).numpy()  # [k, j, i, c]; no copy for a channel-last field
        out = np.empty(field.shape[:3], dtype=field.dtype)
        _jacobian_voxels(field, np.ascontiguousarray(inv), out)
        return torch.from_numpy(out)
    grads = torch.gradient(disp, dim=(3, 2, 1))  # ∂d/∂i, ∂d/∂j, ∂d/∂k, each (3, D, H, W)
    # a[c][r] = δ_cr + Σ_s ∂d_c/∂index_s · (∂index_s/∂x_r), written out: stacking the nine
    # maps and contracting them with tensordot costs ~1.7x more in copies and strides.
    a = [[None] * 3 for _ in range(3)]
    for c in range(3):
        for r in range(3):
            t = grads[0][c] * float(inv[0, r])
            t.add_(grads[1][c], alpha=float(inv[1, r])).add_(grads[2][c], alpha=float(inv[2, r]))
            a[c][r] = t.add_(1.0) if c == r else t
    return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))


def _jacobian_voxels(field, inv, out):
    """``out[k, j, i] = det(I + G(k, j, i) · inv)``, ``G[c, s]`` the central difference of
    ``field[k, j, i, c]`` along index axis s = i, j, k (one-sided at the edges)."""
    nk, nj, ni = out.shape
    for k in numba.prange(nk):
        k0, k1 = max(k - 1, 0), min(k + 1, nk - 1)
        hk = 1.0 / (k1 - k0)
        for j in range(nj):
            j0, j1 = max(j - 1, 0), min(j + 1, nj - 1)
            hj = 1.0 / (j1 - j0)
            for i in range(ni):
                i0, i1 = max(i - 1, 0), min(i + 1, ni - 1)
                hi = 1.0 / (i1 - i0)
                # rows c of I + G·inv, one displacement component at a time
                r0 = _row(field, k, j, i, k0, k1, j0, j1, i0, i1, hk, hj, hi, 0, inv)
                r1 = _row(field, k, j, i, k0, k1, j0, j1, i0, i1, hk, hj, hi, 1, inv)
                r2 = _row(field, k, j, i, k0, k1, j0, j1, i0, i1, hk, hj, hi, 2, inv)
                out[k, j, i] = (r0[0] * (r1[1] * r2[2] - r1[2] * r2[1])
                                - r0[1] * (r1[0] * r2[2] - r1[2] * r2[0])
                                + r0[2] * (r1[0] * r2[1] - r1[1] * r2[0]))


def _row(field, k, j, i, k0, k1, j0, j1, i0, i1, hk, hj, hi, c, inv):
    gi = (field[k, j, i1, c] - field[k, j, i0, c]) * hi
    gj = (field[k, j1, i, c] - field[k, j0, i, c]) * hj
    gk = (field[k1, j, i, c] - field[k0, j, i, c]) * hk
    return (gi * inv[0, 0] + gj * inv[1, 0] + gk * inv[2, 0] + (1.0 if c == 0 else 0.0),
            gi * inv[0, 1] + gj * inv[1, 1] + gk * inv[2, 1] + (1.0 if c == 1 else 0.0),
            gi * inv[0, 2] + gj * inv[1, 2] + gk * inv[2, 2] + (1.0 if c == 2 else 0.0))


if numba is not None:
    _row = numba.njit(inline="always")(_row)
    _jacobian_voxels = numba.njit(parallel=True, cache=True)(_jacobian_voxels)


def folding_percent(jac_det: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Percentage of voxels (inside ``mask`` if given) whose Jacobian determinant is <= 0."""
    folded = jac_det <= 0
    if mask is None:
        return float(folded.float().mean() * 100.0)
    m = mask > 0
    n = int(m.sum())
    return float((folded & m).sum()) * 100.0 / n if n else 0.0


def _correlate1d(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid correlation along ``dim`` as a sum of shifted views (short kernels: far faster
    than conv3d with a 1D kernel on the CPU). The output is ``len(kernel) - 1`` shorter."""
    length = x.shape[dim] - kernel.numel() + 1
    out = x.narrow(dim, 0, length) * float(kernel[0])
    for t in range(1, kernel.numel()):
        out.add_(x.narrow(dim, t, length), alpha=float(kernel[t]))
    return out


def gaussian_gradient_magnitude(volume: torch.Tensor, sigma_vox: float = 0.5) -> torch.Tensor:
    """|∇(G_σ * I)| of a ``(..., D, H, W)`` volume, per voxel (not mm).

    Gaussian derivative filters with σ in voxels, truncated at 4σ (at least one voxel),
    applied separably, with edge replication at the borders.
    """
    radius = max(1, int(np.ceil(4.0 * sigma_vox)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    g = g / g.sum()
    dg = t * g / (t * t * g).sum()  # correlation kernel: exactly 1 on a unit ramp
    shape = volume.shape
    v = volume.reshape(-1, 1, *shape[-3:])
    p = F.pad(v, (radius,) * 6, mode="replicate")
    z, y, x = 2, 3, 4
    sx = _correlate1d(p, g, x)
    gz = _correlate1d(_correlate1d(sx, g, y), dg, z)
    gy = _correlate1d(_correlate1d(sx, g, z), dg, y)
    del sx
    gx = _correlate1d(_correlate1d(_correlate1d(p, g, z), g, y), dg, x)
    mag = torch.sqrt(gx * gx + gy * gy + gz * gz)
    return mag.reshape(shape)
