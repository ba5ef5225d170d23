"""The refinement's Adam iteration on the CPU as three compiled passes over the level's grid.

On the torch path (:mod:`.refine`) one iteration — warp the moving image, local NCC² with
its closed-form gradient (:class:`.refine.LocalNCC2`), the diffusion term, Adam's update —
is some sixty passes over the level's grid, each reading and writing whole arrays, and the
cost per voxel grows once those arrays outgrow the caches. Here it is three passes, each
parallel over the grid's k-slices, each slice's box sums along i and j taken while the
slice is in cache:

1. *warp*: ``q = P·(i, j, k, 1) + M·u`` (voxels of the moving image), ``J = moving(q)``
   trilinear with its gradient, ``∂J/∂u = Mᵀ·∂J/∂q``; the products ``(J, J², I·J)``
   box-summed along i and j;
2. *windows*: those sums finished along k; per window ``A, B, C``, ``NCC²`` and the terms
   of its gradient ``(α, α·μ_I, γ, γ·μ_J)``, box-summed along i and j;
3. *update*: the terms' sums finished along k; ``∂L/∂u`` (similarity and diffusion) and
   Adam's step, written to the second of two buffers (the diffusion term reads the
   neighbours' values from before the step).

The optimised variable is the total displacement ``u = d_net + v`` (LPS mm): the diffusion
term is of ``u`` (see :func:`.refine._objective`), and Adam's step depends on the gradient
only, so optimising ``u`` from ``d_net + v₀`` takes the steps that optimising ``v`` takes.
``M`` maps mm to moving voxels and ``P`` fixed-grid indices to moving voxels, so no array
of sample positions is read.

The numbers are the torch path's to float rounding (the box sums are taken in another
order), and the same for every thread count: no sum is shared between threads, the loss
is summed per slice and then in slice order. Every buffer is made once per level: nothing
is allocated inside the loop.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..core.jit import numba, prange

#: Bytes each iteration must move per grid voxel between memory and the cores, float32:
#: pass 1 reads ``u`` (12), ``I`` (4) and about one moving voxel (4), writes the i,j-sums of
#: the three products (12), ``J`` (4) and ``∂J/∂u`` (12); pass 2 reads the products' sums
#: (12) and the fixed window statistics (16: count, ΣI, B, weight), writes the i,j-sums of
#: the four terms (16); pass 3 reads those (16), ``I``, ``J``, ``∂J/∂u`` (20), ``u`` and
#: Adam's two moments (36) and writes them (36). Neighbours along k come from the caches.
BYTES_PER_VOXEL = (12 + 4 + 4 + 12 + 4 + 12) + (12 + 16 + 16) + (16 + 20 + 36 + 36)


def available() -> bool:
    """Whether the compiled iteration can run (numba present and not switched off)."""
    return numba is not None


def _jit(function):
    return numba.njit(parallel=True, cache=True, fastmath=False)(function) if numba is not None else function


def _njit(function):
    return numba.njit(cache=True, fastmath=False)(function) if numba is not None else function


def _thread_id():
    return 0


if numba is not None:
    _thread_id = numba.get_thread_id  # noqa: F811


# --- box sums within a slice ------------------------------------------------------------------
# One channel at a time, as adds of shifted contiguous views: written so, each add is a loop
# over two distinct views at one index, which compiles to vector instructions (with the
# offset inside the loop it would not: the compiler cannot rule out the overlap). The adds
# follow refine.box_sum's order (the centre, then the pairs at ±1, ±2, …).

@_njit
def _box_rows(src, dst, r):
    """``dst[j, i] = Σ_{|t|≤r} src[j, i + t]`` for ``(H, W)`` arrays, zero outside."""
    n_j, n_i = src.shape
    for j in range(n_j):
        s, d = src[j], dst[j]
        for i in range(n_i):
            d[i] = s[i]
        for t in range(1, min(r, n_i - 1) + 1):
            ahead, behind = d[t:], s[:n_i - t]
            for i in range(n_i - t):
                ahead[i] += behind[i]
            ahead, behind = d[:n_i - t], s[t:]
            for i in range(n_i - t):
                ahead[i] += behind[i]


@_njit
def _box_columns(src, dst, r):
    """``dst[j, i] = Σ_{|t|≤r} src[j + t, i]`` for C-contiguous ``(H, W)`` arrays, zero outside."""
    n_j, n_i = src.shape
    m = n_j * n_i
    s, d = src.reshape(m), dst.reshape(m)
    for e in range(m):
        d[e] = s[e]
    for t in range(1, min(r, n_j - 1) + 1):
        off = t * n_i
        ahead, behind = d[off:], s[:m - off]
        for e in range(m - off):
            ahead[e] += behind[e]
        ahead, behind = d[:m - off], s[off:]
        for e in range(m - off):
            ahead[e] += behind[e]


@_njit
def _sum_slices(src, k, r, dst):
    """``dst = Σ_{|t|≤r} src[k + t]`` for a C-contiguous ``(D, H, W)`` array, zero outside."""
    n_k, n_j, n_i = src.shape
    m = n_j * n_i
    d = dst.reshape(m)
    centre = src[k].reshape(m)
    for e in range(m):
        d[e] = centre[e]
    for t in range(1, r + 1):
        if k - t >= 0:
            other = src[k - t].reshape(m)
            for e in range(m):
                d[e] += other[e]
        if k + t < n_k:
            other = src[k + t].reshape(m)
            for e in range(m):
                d[e] += other[e]


@_njit
def _sum_slices_within(src, k, r, extents, dst):
    """:func:`_sum_slices` on each row ``j`` of slice ``k`` within its extent
    ``[extents[0, k, j], extents[1, k, j])`` only (the same adds in the same order); the rest
    of ``dst`` is left as it is."""
    n_k, n_j = src.shape[0], src.shape[1]
    for j in range(n_j):
        lo, hi = extents[0, k, j], extents[1, k, j]
        d = dst[j, lo:hi]
        centre = src[k, j, lo:hi]
        for e in range(hi - lo):
            d[e] = centre[e]
        for t in range(1, r + 1):
            if k - t >= 0:
                other = src[k - t, j, lo:hi]
                for e in range(hi - lo):
                    d[e] += other[e]
            if k + t < n_k:
                other = src[k + t, j, lo:hi]
                for e in range(hi - lo):
                    d[e] += other[e]


@_njit
def _clear_outside(row, lo, hi):
    """``row[:lo]`` and ``row[hi:]`` set to 0 (each as a loop from 0, see :func:`_warp_pass`)."""
    zero = np.float32(0.0)
    for i in range(lo):
        row[i] = zero
    rest = row[hi:]
    for i in range(rest.shape[0]):
        rest[i] = zero


@_njit
def _box_slice(src, tmp, dst, r):
    """``dst`` = the i,j box sums of the ``(H, W)`` slice ``src`` (``tmp``: a buffer of its shape)."""
    _box_rows(src, tmp, r)
    _box_columns(tmp, dst, r)


# --- the three passes ---------------------------------------------------------------------------

@_jit
def _warp_pass(moving, index_to_moving, mm_to_vox, fixed, u, r, reach, warped, dj_du, products, scratch, rows, cells):
    """Pass 1: ``warped = moving(q)``, ``dj_du = Mᵀ ∂J/∂q`` (``(3, D, H, W)``), ``products`` =
    i,j-sums of ``(J, J², I·J)`` (``(3, D, H, W)``). Trilinear with positions clamped to the
    volume (grid_sample's 'border', align_corners=True): its gradient is 0 along a clamped axis.

    Each row is three loops: the first finds every sample's cell and weights (arithmetic
    only), the second gathers the cells' eight corners into rows, the third interpolates.
    Apart, the first and the third compile to vector instructions; together they did not
    (the split of the first: 1.7× faster; of the gathers, with unsigned indices: the pass
    1.3–1.4× faster again), bit for bit the same. ``rows``: ``(threads, 14, W)`` float32
    (weights, in-volume factors, corners), ``cells``: ``(threads, W)`` int32 (the moving image
    has fewer than 2³¹ voxels, checked by :class:`FusedAdam`).

    ``reach``: ``(2, D, H)`` int64, per row the voxels ``[lo, hi)`` that a weighted window
    reads (:func:`row_extents`); only those are sampled. Elsewhere ``warped`` and ``dj_du``
    keep what they hold (zeros: :class:`FusedAdam`), and the products are 0."""
    nk, nj, ni = moving.shape
    n_k, n_j, n_i = fixed.shape
    flat = moving.reshape(nk * nj * ni)
    p, m = index_to_moving, mm_to_vox
    zero, one = np.float32(0.0), np.float32(1.0)
    top_x, top_y, top_z = np.float32(ni - 1), np.float32(nj - 1), np.float32(nk - 1)
    last_i, last_j, last_k = np.int32(max(ni - 2, 0)), np.int32(max(nj - 2, 0)), np.int32(max(nk - 2, 0))
    # Offsets of the cell's corners from its first; 0 along an axis of one voxel.
    di, dj, dk = np.uint64(min(1, ni - 1)), np.uint64(min(1, nj - 1) * ni), np.uint64(min(1, nk - 1) * nj * ni)
    for k in prange(n_k):
        t_id = _thread_id()
        buf = scratch[t_id]
        fx_row, fy_row, fz_row = rows[t_id, 0], rows[t_id, 1], rows[t_id, 2]
        # 1 where the position lies strictly inside along the axis, else 0 (torch counts the
        # border itself as outside): the gradient's factor along that axis.
        in_x, in_y, in_z = rows[t_id, 3], rows[t_id, 4], rows[t_id, 5]
        cell = cells[t_id]
        for j in range(n_j):
            # The part of the sample positions that does not depend on u, in float64 (indices
            # of several hundred voxels would lose their fractions in float32), then float32.
            x0 = p[0, 1] * j + p[0, 2] * k + p[0, 3]
            y0 = p[1, 1] * j + p[1, 2] * k + p[1, 3]
            z0 = p[2, 1] * j + p[2, 2] * k + p[2, 3]
            # Every loop below runs over views that start at the extent's first voxel, from 0:
            # indices known to be non-negative keep numba's wrap-around checks, and with them
            # vector instructions, out of the loops.
            lo, hi = reach[0, k, j], reach[1, k, j]
            n = hi - lo
            ux, uy, uz = u[0, k, j, lo:hi], u[1, k, j, lo:hi], u[2, k, j, lo:hi]
            for t in range(n):
                i = lo + t
                u0, u1, u2 = ux[t], uy[t], uz[t]
                x = np.float32(x0 + p[0, 0] * i) + (m[0, 0] * u0 + m[0, 1] * u1 + m[0, 2] * u2)
                y = np.float32(y0 + p[1, 0] * i) + (m[1, 0] * u0 + m[1, 1] * u1 + m[1, 2] * u2)
                z = np.float32(z0 + p[2, 0] * i) + (m[2, 0] * u0 + m[2, 1] * u1 + m[2, 2] * u2)
                in_x[t] = one if zero < x < top_x else zero
                in_y[t] = one if zero < y < top_y else zero
                in_z[t] = one if zero < z < top_z else zero
                x = min(max(x, zero), top_x)
                y = min(max(y, zero), top_y)
                z = min(max(z, zero), top_z)
                i0 = min(np.int32(x), last_i)
                j0 = min(np.int32(y), last_j)
                k0 = min(np.int32(z), last_k)
                fx_row[t] = x - np.float32(i0)
                fy_row[t] = y - np.float32(j0)
                fz_row[t] = z - np.float32(k0)
                cell[t] = (k0 * np.int32(nj) + j0) * np.int32(ni) + i0
            s_j, s_jj, s_ij = buf[0, j], buf[1, j], buf[2, j]
            for row in (s_j, s_jj, s_ij):
                _clear_outside(row, lo, hi)
            out, d0, d1, d2 = warped[k, j, lo:hi], dj_du[0, k, j, lo:hi], dj_du[1, k, j, lo:hi], dj_du[2, k, j, lo:hi]
            s_j, s_jj, s_ij, f = s_j[lo:hi], s_jj[lo:hi], s_ij[lo:hi], fixed[k, j, lo:hi]
            # The gathers on their own, then the arithmetic over rows (which then compiles to
            # vector instructions); unsigned indices keep numba's wrap-around checks out.
            v000, v001, v010, v011 = rows[t_id, 6], rows[t_id, 7], rows[t_id, 8], rows[t_id, 9]
            v100, v101, v110, v111 = rows[t_id, 10], rows[t_id, 11], rows[t_id, 12], rows[t_id, 13]
            for t in range(n):
                c = np.uint64(cell[t])
                v000[t], v001[t] = flat[c], flat[c + di]
                v010[t], v011[t] = flat[c + dj], flat[c + dj + di]
                v100[t], v101[t] = flat[c + dk], flat[c + dk + di]
                v110[t], v111[t] = flat[c + dk + dj], flat[c + dk + dj + di]
            for t in range(n):
                fx, fy, fz = fx_row[t], fy_row[t], fz_row[t]
                c000, c001, c010, c011 = v000[t], v001[t], v010[t], v011[t]
                c100, c101, c110, c111 = v100[t], v101[t], v110[t], v111[t]
                gx_, gy_, gz_ = one - fx, one - fy, one - fz
                # Weighted sums, not a + (b − a)·f: exact at the voxels themselves (f = 0 or 1).
                a00 = c000 * gx_ + c001 * fx
                a01 = c010 * gx_ + c011 * fx
                a10 = c100 * gx_ + c101 * fx
                a11 = c110 * gx_ + c111 * fx
                b0 = a00 * gy_ + a01 * fy
                b1 = a10 * gy_ + a11 * fy
                value = b0 * gz_ + b1 * fz
                gx = (((c001 - c000) * gy_ + (c011 - c010) * fy) * gz_
                      + ((c101 - c100) * gy_ + (c111 - c110) * fy) * fz) * in_x[t]
                gy = ((a01 - a00) * gz_ + (a11 - a10) * fz) * in_y[t]
                gz = (b1 - b0) * in_z[t]
                out[t] = value
                d0[t] = gx * m[0, 0] + gy * m[1, 0] + gz * m[2, 0]
                d1[t] = gx * m[0, 1] + gy * m[1, 1] + gz * m[2, 1]
                d2[t] = gx * m[0, 2] + gy * m[1, 2] + gz * m[2, 2]
                s_j[t] = value
                s_jj[t] = value * value
                s_ij[t] = f[t] * value
        for c in range(3):
            _box_slice(buf[c], buf[3], products[c, k], r)


@_jit
def _window_pass(products, windows, eps, r, weighted, terms, partial, scratch):
    """Pass 2: per window A, B, C and NCC² (:class:`.refine.LocalNCC2`); ``terms`` = i,j-sums
    of ``(α, α·μ_I, γ, γ·μ_J)`` (``(4, D, H, W)``); ``partial[k]`` = Σ over slice k of w·NCC².
    ``windows``: ``(4, D, H, W)`` count, ΣI, B (the fixed image's variance sum), weight;
    ``weighted``: ``(2, D, H)`` int64, per row the windows ``[lo, hi)`` that hold all its
    weight (:func:`row_extents`); the terms are 0 outside, as they would be computed."""
    n_k, n_j = windows.shape[1], windows.shape[2]
    zero, one, two = np.float32(0.0), np.float32(1.0), np.float32(2.0)
    eps = np.float32(eps)
    for k in prange(n_k):
        t_id = _thread_id()
        sums = scratch[t_id, 0:3]
        buf = scratch[t_id, 3:7]
        for c in range(3):  # needed at the weighted windows only
            _sum_slices_within(products[c], k, r, weighted, sums[c])
        total = 0.0
        for j in range(n_j):
            n, s_f, b, w = windows[0, k, j], windows[1, k, j], windows[2, k, j], windows[3, k, j]
            s_w, s_ww, s_fw = sums[0, j], sums[1, j], sums[2, j]
            alpha, alpha_mu, gamma, gamma_mu = buf[0, j], buf[1, j], buf[2, j], buf[3, j]
            lo, hi = weighted[0, k, j], weighted[1, k, j]
            for row in (alpha, alpha_mu, gamma, gamma_mu):
                _clear_outside(row, lo, hi)
            # Views from the extent's first window, looped from 0 (see _warp_pass).
            n, s_f, b, w = n[lo:hi], s_f[lo:hi], b[lo:hi], w[lo:hi]
            s_w, s_ww, s_fw = s_w[lo:hi], s_ww[lo:hi], s_fw[lo:hi]
            alpha, alpha_mu, gamma, gamma_mu = alpha[lo:hi], alpha_mu[lo:hi], gamma[lo:hi], gamma_mu[lo:hi]
            ncc2 = scratch[t_id, 7, j]
            for i in range(hi - lo):
                inv_n = one / n[i]
                mu_f, mu_w = s_f[i] * inv_n, s_w[i] * inv_n
                a = s_fw[i] - s_f[i] * mu_w
                c = max(s_ww[i] - s_w[i] * mu_w, zero)
                floor = eps * n[i]
                den = b[i] * max(c, floor) + (one if b[i] <= floor else zero)
                inv_den = one / den
                ncc2[i] = w[i] * (a * a * inv_den)
                al = two * w[i] * a * inv_den
                # γ = α·(A·B/den) by a division: for identical images A = C, so the ratio is
                # exactly 1 and the gradient exactly 0 (as on the torch path; a product with
                # 1/den would leave a residue that Adam turns into drift).
                ga = al * (a * b[i] / den) if c > floor else zero
                alpha[i] = al
                alpha_mu[i] = al * mu_f
                gamma[i] = ga
                gamma_mu[i] = ga * mu_w
            for i in range(hi - lo):
                total += ncc2[i]
        partial[k] = total
        for c in range(4):
            _box_slice(buf[c], scratch[t_id, 7], terms[c, k], r)


@_jit
def _update_pass(terms, fixed, warped, dj_du, u, u_next, m1, m2, r, reach, constants, scratch, sliding, edges,
                 slack, row_ptr, cols):
    """Pass 3: ``∂L/∂u`` for ``L = scale · (λ·diffusion(u) − Σ w·NCC²)`` and Adam's step,
    ``u_next = u − lr_t · m₁ / (√m₂ / bias2 + eps)``; ``u``, ``dj_du``, the moments:
    ``(3, D, H, W)``. ``constants`` (float32): scale·λ times the diffusion gradient's factor
    ``6 / (spacing² · n_differences)`` along z, y, x; scale; 1 − β₁; β₂; 1 − β₂; lr_t; bias2; eps.
    ``reach``: the rows' extents of :func:`_warp_pass`; outside them no weighted window holds
    the voxel, and the similarity's part of the gradient is 0 (computed so, it would be).
    ``sliding``: whether ``edges`` (uint8 ``(3, D, H, W)``: 1 where the neighbour along z, y, x
    lies across the lung surface) and ``slack`` (float32 ``(3, 3)``: ``cz·(1 − w)`` per axis and
    component, ``w`` the diffusion's weight across the surface) take part, at the voxels that
    touch the surface only (row ``(k, j)``'s are ``cols[row_ptr[k·H + j]:row_ptr[k·H + j + 1]]``,
    :func:`surface_voxels`); without, the gradient is the isotropic one, bit for bit."""
    n_k, n_j, n_i = fixed.shape
    cz, cy, cx, scale, step1, beta2, step2, lr_t, bias2, eps = (constants[0], constants[1], constants[2],
                                                                 constants[3], constants[4], constants[5],
                                                                 constants[6], constants[7], constants[8],
                                                                 constants[9])
    for k in prange(n_k):
        t_id = _thread_id()
        sums = scratch[t_id, 0:4]
        g_j = scratch[t_id, 4]
        grad = scratch[t_id, 5]
        for c in range(4):
            _sum_slices_within(terms[c], k, r, reach, sums[c])
        for j in range(n_j):
            # ∂(Σ w·NCC²)/∂J(x) = I·Σα − J·Σγ + Σγμ_J − Σαμ_I, times the loss's scale
            lo, hi = reach[0, k, j], reach[1, k, j]
            out = g_j[j]
            _clear_outside(out, lo, hi)
            f, jw = fixed[k, j, lo:hi], warped[k, j, lo:hi]
            s_a, s_am, s_g, s_gm = sums[0, j, lo:hi], sums[1, j, lo:hi], sums[2, j, lo:hi], sums[3, j, lo:hi]
            out = out[lo:hi]
            for i in range(hi - lo):
                out[i] = scale * (f[i] * s_a[i] - jw[i] * s_g[i] + (s_gm[i] - s_am[i]))
        # Neighbours clamped at the border: there the difference is 0, as the term has none.
        km, kp = max(k - 1, 0), min(k + 1, n_k - 1)
        for c in range(3):
            for j in range(n_j):
                jm, jp = max(j - 1, 0), min(j + 1, n_j - 1)
                here, zm, zp, ym, yp = u[c, k, j], u[c, km, j], u[c, kp, j], u[c, k, jm], u[c, k, jp]
                g = grad[j]
                for i in range(n_i):
                    h = here[i]
                    g[i] = cz * ((h - zm[i]) - (zp[i] - h)) + cy * ((h - ym[i]) - (yp[i] - h))
                for i in range(1, n_i - 1):
                    g[i] += cx * ((here[i] - here[i - 1]) - (here[i + 1] - here[i]))
                if n_i > 1:
                    g[0] -= cx * (here[1] - here[0])
                    g[n_i - 1] += cx * (here[n_i - 1] - here[n_i - 2])
                first, last = (row_ptr[k * n_j + j], row_ptr[k * n_j + j + 1]) if sliding else (0, 0)
                if last > first:
                    # Across the lung surface the difference weighs w instead of 1: give back (1 − w)
                    # of each crossing difference's share (0 at the clamped borders, as above).
                    sz_, sy_, sx_ = slack[0, c], slack[1, c], slack[2, c]
                    ezm, ezp, eym, eyp, ex = edges[0, km, j], edges[0, k, j], edges[1, k, jm], edges[1, k, j], edges[2, k, j]
                    for t in range(first, last):
                        i = cols[t]
                        h = here[i]
                        d = (sz_ * ((zp[i] - h) * ezp[i] - (h - zm[i]) * ezm[i])
                             + sy_ * ((yp[i] - h) * eyp[i] - (h - ym[i]) * eym[i]))
                        if i + 1 < n_i:
                            d += sx_ * (here[i + 1] - h) * ex[i]
                        if i > 0:
                            d -= sx_ * (h - here[i - 1]) * ex[i - 1]
                        g[i] += d
                dj, gj, mean, var, nxt = dj_du[c, k, j], g_j[j], m1[c, k, j], m2[c, k, j], u_next[c, k, j]
                for i in range(n_i):
                    gi = g[i] - gj[i] * dj[i]
                    mi = mean[i] + step1 * (gi - mean[i])
                    vi = var[i] * beta2 + step2 * gi * gi
                    mean[i] = mi
                    var[i] = vi
                    nxt[i] = here[i] - lr_t * (mi / (np.sqrt(vi) / bias2 + eps))


@_jit
def _row_extents(weight, r, extents):
    """``extents[0]``: per row ``(k, j)`` of ``weight`` (``(D, H, W)``), the voxels ``[lo, hi)``
    between its first and last weighted one; ``extents[1]``: the same of the weighted windows
    grown by ``r`` voxels along every axis (the voxels their box sums read), the rows' hull.
    ``extents``: ``(2, 2, D, H)`` int64; an empty row is ``[0, 0)``."""
    n_k, n_j, n_i = weight.shape
    own, reach = extents[0], extents[1]
    for k in prange(n_k):
        for j in range(n_j):
            lo, hi = n_i, 0
            row = weight[k, j]
            for i in range(n_i):
                if row[i] != 0.0:
                    lo, hi = min(lo, i), i + 1
            own[0, k, j], own[1, k, j] = (lo, hi) if hi > 0 else (0, 0)
    for k in prange(n_k):
        for j in range(n_j):
            lo, hi = n_i, 0
            for kk in range(max(0, k - r), min(n_k, k + r + 1)):
                for jj in range(max(0, j - r), min(n_j, j + r + 1)):
                    if own[1, kk, jj] > own[0, kk, jj]:
                        lo, hi = min(lo, own[0, kk, jj] - r), max(hi, own[1, kk, jj] + r)
            lo, hi = max(lo, 0), min(hi, n_i)
            reach[0, k, j], reach[1, k, j] = (lo, hi) if hi > lo else (0, 0)


def row_extents(weight: np.ndarray, radius: int, restrict: bool = True) -> np.ndarray:
    """``(2, 2, D, H)`` int64 row extents of a ``(D, H, W)`` window weight (:func:`_row_extents`);
    ``restrict=False``: every row whole (the passes then compute everywhere, the reference)."""
    extents = np.empty((2, 2, *weight.shape[:2]), np.int64)
    if restrict:
        _row_extents(np.ascontiguousarray(weight, np.float32), int(radius), extents)
    else:
        extents[:, 0], extents[:, 1] = 0, weight.shape[2]
    return extents


@contextlib.contextmanager
def _threads(n: int):
    """numba's thread count set to ``n`` (at most its pool) for the block, then restored."""
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


class FusedAdam:
    """Adam on the total displacement ``u`` of one level, three compiled passes an iteration.

    ``fixed``: ``(D, H, W)`` float32 in [0, 1] on the level's fixed grid; ``moving``:
    ``(D', H', W')`` float32; ``index_to_moving``: ``(3, 4)`` fixed-grid index ``(i, j, k, 1)``
    -> moving voxel ``(x, y, z)``; ``mm_to_vox``: ``(3, 3)`` LPS mm -> moving voxels;
    ``windows``: ``(4, D, H, W)`` count, ΣI, B, weight (:func:`window_statistics`);
    ``u0``: ``(3, D, H, W)`` LPS mm, one plane per component (so that every loop over i runs
    over contiguous float32 and compiles to vector instructions), taken over as the first
    buffer of ``u`` where it already is C-contiguous float32; ``spacing_mm``: the grid's
    (x, y, z) spacing. ``scale``,
    ``smoothness``, ``lr``, ``eps``, ``betas``: the loss's and Adam's constants, as on the
    torch path. ``threads``: numba threads for the passes. ``restrict``: sample the moving
    image and form the windows' terms only within the rows' extents of the weighted windows
    (:func:`row_extents`; the body within the lung box leaves about a fifth of the box out):
    the same numbers, bit for bit, as computing everywhere.
    """

    def __init__(self, fixed, moving, index_to_moving, mm_to_vox, windows, u0, spacing_mm, *, radius: int,
                 eps_variance: float, scale: float, smoothness: float, lr: float, eps: float,
                 betas: tuple[float, float] = (0.9, 0.999), threads: int = 1, restrict: bool = True,
                 edges=None, across=None):
        f32 = np.float32
        self.fixed = np.ascontiguousarray(fixed, f32)
        self.moving = np.ascontiguousarray(moving, f32)
        self.index_to_moving = np.ascontiguousarray(index_to_moving, np.float64)
        self.mm_to_vox = np.ascontiguousarray(mm_to_vox, f32)
        self.windows = np.ascontiguousarray(windows, f32)
        shape = self.fixed.shape
        self.u = np.ascontiguousarray(u0, dtype=f32)  # no copy where it already is: the caller's buffer is taken over
        if self.u.shape != (3, *shape):
            raise ValueError(f"u0 {self.u.shape}: expected (3, {', '.join(map(str, shape))})")
        self._next = np.empty_like(self.u)
        # np.zeros, not zeros_like: fresh zeroed pages from the system, not a pass of writes.
        self.m1, self.m2 = np.zeros(self.u.shape, f32), np.zeros(self.u.shape, f32)
        # Zeros where the passes never write (outside the extents), so that the update's
        # products with them are exact zeros.
        self.warped = np.zeros(shape, f32)
        self.dj_du = np.zeros(self.u.shape, f32)
        self.extents = row_extents(self.windows[3], radius, restrict)
        self.products = np.empty((3, *shape), f32)
        self.terms = np.empty((4, *shape), f32)
        self.partial = np.empty(shape[0], np.float64)
        if self.moving.size >= 2**31:
            raise ValueError(f"moving image of {self.moving.size} voxels: the compiled path indexes it with int32")
        pool = numba.config.NUMBA_NUM_THREADS
        self._scratch = np.empty((pool, 8, *shape[1:]), f32)
        self._rows = np.empty((pool, 14, shape[2]), f32)
        self._cells = np.empty((pool, shape[2]), np.int32)
        n_k, n_j, n_i = shape
        sx, sy, sz = spacing_mm
        counts = ((n_k - 1) * n_j * n_i * 3, n_k * (n_j - 1) * n_i * 3, n_k * n_j * (n_i - 1) * 3)
        self.diffusion_mm2 = np.array([6.0 / (s * s * c) if c else 0.0 for s, c in zip((sz, sy, sx), counts)])
        self.radius, self.eps_variance, self.scale = int(radius), float(eps_variance), float(scale)
        self.smoothness, self.lr, self.eps, self.betas = float(smoothness), float(lr), float(eps), betas
        self.threads, self.t = threads, 0
        # The lung surface's edges and the diffusion's weight across them (:func:`.refine.surface_edges`).
        self.sliding = edges is not None
        self.edges = np.ascontiguousarray(edges, np.uint8) if self.sliding else np.zeros((3, 1, 1, 1), np.uint8)
        self.across = np.ascontiguousarray(across if self.sliding else np.ones((3, 3)), np.float32)
        self.row_ptr, self.cols = surface_voxels(self.edges) if self.sliding else (np.zeros(1, np.int64),
                                                                                  np.zeros(0, np.int32))

    def _similarity(self) -> float:
        _warp_pass(self.moving, self.index_to_moving, self.mm_to_vox, self.fixed, self.u, self.radius,
                   self.extents[1], self.warped, self.dj_du, self.products, self._scratch, self._rows, self._cells)
        _window_pass(self.products, self.windows, self.eps_variance, self.radius, self.extents[0], self.terms,
                     self.partial, self._scratch)
        return float(self.partial.sum())

    def similarity(self) -> float:
        """``Σ w·NCC²`` at the current ``u``."""
        with _threads(self.threads):
            return self._similarity()

    def step(self) -> float:
        """One Adam step; returns ``Σ w·NCC²`` before it."""
        b1, b2 = self.betas
        self.t += 1
        with _threads(self.threads):
            similarity = self._similarity()
            constants = np.array([*(self.scale * self.smoothness * self.diffusion_mm2), self.scale, 1.0 - b1, b2,
                                  1.0 - b2, self.lr / (1.0 - b1**self.t), np.sqrt(1.0 - b2**self.t), self.eps],
                                 np.float32)
            slack = (constants[:3, None] * (1.0 - self.across)).astype(np.float32)
            _update_pass(self.terms, self.fixed, self.warped, self.dj_du, self.u, self._next, self.m1, self.m2,
                         self.radius, self.extents[1], constants, self._scratch, self.sliding, self.edges, slack,
                         self.row_ptr, self.cols)
        self.u, self._next = self._next, self.u
        return similarity


def surface_voxels(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxels that a difference across the lung surface touches, row by row: ``row_ptr``
    (int64, ``D·H + 1``) and ``cols`` (int32 i-indices), row ``(k, j)``'s being
    ``cols[row_ptr[k·H + j]:row_ptr[k·H + j + 1]]``. ``edges``: uint8 ``(3, D, H, W)``, 1 where
    the next neighbour along z, y, x lies across the surface."""
    ez, ey, ex = (e.astype(bool) for e in edges)
    touch = ez | ey | ex
    touch[1:] |= ez[:-1]
    touch[:, 1:] |= ey[:, :-1]
    touch[:, :, 1:] |= ex[:, :, :-1]
    rows = touch.reshape(-1, touch.shape[2])
    row_ptr = np.zeros(rows.shape[0] + 1, np.int64)
    np.cumsum(rows.sum(axis=1), out=row_ptr[1:])
    return row_ptr, np.nonzero(rows)[1].astype(np.int32)


@_jit
def _squared_differences(u, partial, sliding, edges, across):
    """``partial[k]`` = Σ over components and slice k of the squared forward differences of
    ``u`` (``(3, D, H, W)``) along z (to slice k + 1), y and x, float64; with ``sliding``, a
    difference across the lung surface (``edges``) weighs ``across[axis, component]``."""
    n_c, n_k, n_j, n_i = u.shape
    for k in prange(n_k):
        s_z = s_y = s_x = 0.0
        for c in range(n_c):
            for j in range(n_j):
                here = u[c, k, j]
                if k + 1 < n_k:
                    above = u[c, k + 1, j]
                    for i in range(n_i):
                        d2 = np.float64(above[i] - here[i]) ** 2
                        s_z += d2 * across[0, c] if sliding and edges[0, k, j, i] else d2
                if j + 1 < n_j:
                    ahead = u[c, k, j + 1]
                    for i in range(n_i):
                        d2 = np.float64(ahead[i] - here[i]) ** 2
                        s_y += d2 * across[1, c] if sliding and edges[1, k, j, i] else d2
                for i in range(n_i - 1):
                    d2 = np.float64(here[i + 1] - here[i]) ** 2
                    s_x += d2 * across[2, c] if sliding and edges[2, k, j, i] else d2
        partial[k, 0], partial[k, 1], partial[k, 2] = s_z, s_y, s_x


def diffusion(u, spacing_mm, threads: int = 1, edges=None, across=None) -> float:
    """:func:`.refine.diffusion` of a field stored as planes, ``u``: ``(3, D, H, W)`` LPS mm on
    a grid of (x, y, z) ``spacing_mm``: the mean squared forward difference per mm along each
    axis, their sum times 3 (across the lung surface, ``edges``, weighed by ``across``). One
    pass, summed per slice in float64, then in slice order."""
    u = np.ascontiguousarray(u, np.float32)
    n_k, n_j, n_i = u.shape[1:]
    partial = np.empty((n_k, 3))
    sliding = edges is not None
    edges = np.ascontiguousarray(edges, np.uint8) if sliding else np.zeros((3, 1, 1, 1), np.uint8)
    across = np.ascontiguousarray(across if sliding else np.ones((3, 3)), np.float64)
    with _threads(threads):
        _squared_differences(u, partial, sliding, edges, across)
    sums = partial.sum(axis=0)
    sx, sy, sz = spacing_mm
    counts = (3 * (n_k - 1) * n_j * n_i, 3 * n_k * (n_j - 1) * n_i, 3 * n_k * n_j * (n_i - 1))
    return 3.0 * sum(total / (count * s * s) for total, count, s in zip(sums, counts, (sz, sy, sx)) if count)


@_jit
def _fixed_pass(fixed, r, sums, scratch):
    """``sums`` = i,j-sums of ``(1, I, I²)`` (``(3, D, H, W)``)."""
    n_k, n_j, n_i = fixed.shape
    one = np.float32(1.0)
    for k in prange(n_k):
        buf = scratch[_thread_id()]
        for j in range(n_j):
            f = fixed[k, j]
            for i in range(n_i):
                buf[0, j, i] = one
                buf[1, j, i] = f[i]
                buf[2, j, i] = f[i] * f[i]
        for c in range(3):
            _box_slice(buf[c], buf[3], sums[c, k], r)


@_jit
def _statistics_pass(sums, weight, r, windows, scratch):
    """``windows`` = (count, ΣI, B, weight) from the i,j-sums of :func:`_fixed_pass`."""
    n_k, n_j, n_i = weight.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    for k in prange(n_k):
        full = scratch[_thread_id(), 0:3]
        for c in range(3):
            _sum_slices(sums[c], k, r, full[c])
        for j in range(n_j):
            for i in range(n_i):
                n, s_f, s_ff = full[0, j, i], full[1, j, i], full[2, j, i]
                windows[0, k, j, i] = n
                windows[1, k, j, i] = s_f
                # The window pass's own arithmetic for C (s·(s·(1/n)), not s·(s/n)): an image
                # warped onto itself then has C = B bit for bit. Otherwise they differ by the
                # rounding of a sum near (ΣI)²/n, which in low-variance windows can put B just
                # above the flat-window floor and C just below it; those windows then get
                # α without γ, and a full Adam step between identical images.
                windows[2, k, j, i] = max(s_ff - s_f * (s_f * (one / n)), zero)
                windows[3, k, j, i] = weight[k, j, i]


def window_statistics(fixed, weight, radius: int, threads: int = 1) -> np.ndarray:
    """``(4, D, H, W)`` float32 of a ``(D, H, W)`` fixed image: per window its voxel count, ΣI,
    ``B = ΣI² − (ΣI)²/n`` (≥ 0), and ``weight``. The box sums are the passes' own, so that an
    image warped onto itself gives the fixed image's sums bit for bit."""
    fixed = np.ascontiguousarray(fixed, np.float32)
    weight = np.ascontiguousarray(weight, np.float32)
    sums = np.empty((3, *fixed.shape), np.float32)
    windows = np.empty((4, *fixed.shape), np.float32)
    scratch = np.empty((numba.config.NUMBA_NUM_THREADS, 4, *fixed.shape[1:]), np.float32)
    with _threads(threads):
        _fixed_pass(fixed, int(radius), sums, scratch)
        _statistics_pass(sums, weight, int(radius), windows, scratch)
    return windows
