"""Test-time refinement of the network's field: a short instance optimisation on the CT.

The network captures the large breathing motion in one pass; what it leaves (a few mm) is
removed here by optimising a dense displacement ``v`` added to the network's field:

    φ(x) = φ_net(x) + v(x)        (LPS mm, resampling direction: fixed -> moving)

``v`` lives on the fixed lung crop at each level's spacing (coarse to fine, e.g. 4 then 2 mm),
and is found by Adam on

    L(v) = 1 − mean_body(NCC²_local(F, M∘φ)) + λ · mean(‖∇v‖²)

* ``F``/``M``: the fixed and moving CT in HU, clipped to ``hu_range`` and scaled to [0, 1],
  box-averaged to the level's spacing (``BinShrink``: no aliasing, no resampling of ``F``);
* local NCC over a cube of ``2·radius_vox + 1`` voxels, its box sums as separable sums of
  shifted views; squared, so that the gradient is smooth at 0; its denominator is floored
  at a tiny ``eps`` (flat regions give 0, not 0/0) rather than offset by it, since an offset
  rewards contrast and moves even identical images; NCC is invariant to a local linear
  change of intensity (the lungs are denser on exhale);
* the mean runs over the fixed body mask only (air outside carries no information), and
  over windows where the fixed image is not flat;
* diffusion regulariser over the whole crop, ``∇`` per mm, so ``λ`` does not depend on the
  spacing; with the default weight the refined field stays fold-free (benchmarks).

Deterministic for a given input: fixed iteration counts, no random sampling, and kernels
without atomics (the moving image needs no gradient, so ``grid_sample``'s backward has no
scattered sums either). Every level's tensors live on the chosen torch device. On the CPU
with numba, each iteration is three compiled passes (:mod:`.fused`); on any other device,
or without numba, it is device-generic torch (``grid_sample`` for the warp, on the CPU slab
by slab as a batch, which is how its 3D sampler uses more than one core, and autograd for
the rest): the same numbers to float rounding.

Arrays are ``[k, j, i]``; vectors ``(x, y, z)`` = LPS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..core import fields
from ..core.grid import Grid
from ..core.parallel import side_by_side
from . import fused
from .refine_config import DEFAULT, RefineConfig

# --- images at a level ----------------------------------------------------------------------

#: How far from its stated spacing a level's cells may be (a fraction): finer for the
#: coarser levels, coarser for the finest. Measured (docs/CONVENTIONS.md): 0.05 made the
#: "2 mm" level of 1.6 mm voxels 3.2 mm and cost 0.1 mm of TRE on phantom pairs; 0.2 keeps
#: it at 1.6 mm.
SPACING_TOLERANCE = 0.2


def shrink_factors(image: sitk.Image, spacing_mm: float, finest: bool = False) -> tuple[int, int, int]:
    """Whole voxels per cell along (i, j, k) for voxel sizes ``s`` mm: the factor ``f`` nearest
    to ``spacing_mm / s``, then

    * at a coarser level, raised where needed to the smallest ``f`` with
      ``f · s ≥ (1 − SPACING_TOLERANCE) · spacing_mm``: no axis is finer than the stated
      spacing by more than the tolerance, since those levels are there for speed (1.37 mm
      voxels: 4.11 mm cells at a 4 mm level; 0.977 mm: 3.91 mm);
    * at the finest level, lowered where needed to the largest ``f`` with
      ``f · s ≤ (1 + SPACING_TOLERANCE) · spacing_mm``: no axis is coarser than the stated
      spacing by more than the tolerance, since that level sets the accuracy (1.37 mm
      voxels: 1.37 mm at a 2 mm level, not 2.74 mm; 0.977 mm: 1.95 mm; 0.7 mm: 2.1 mm);

    voxels already coarser keep ``f = 1``; at least two cells remain along every axis."""
    low, high = (1.0 - SPACING_TOLERANCE) * spacing_mm, (1.0 + SPACING_TOLERANCE) * spacing_mm

    def factor(s: float) -> int:
        nearest = int(round(spacing_mm / s))
        # The 1e-9 keeps an exact multiple (f·s on the bound up to float rounding) at f.
        if finest:
            return min(nearest, int(np.floor(high / s + 1e-9)))
        return max(nearest, int(np.ceil(low / s - 1e-9)))

    return tuple(max(1, min(n // 2, factor(s))) for s, n in zip(image.GetSpacing(), image.GetSize()))


def _normalised(image: sitk.Image, spacing_mm: float, hu_range: tuple[float, float], finest: bool = False
                ) -> sitk.Image:
    """``image`` clipped to ``hu_range``, scaled to [0, 1], box-averaged to ~``spacing_mm``
    (:func:`shrink_factors`; ``finest``: the last level's rule)."""
    lo, hi = hu_range
    if image.GetPixelID() != sitk.sitkFloat32:  # callers pass float32 copies, made once for all levels
        image = sitk.Cast(image, sitk.sitkFloat32)
    factors = shrink_factors(image, spacing_mm, finest)
    small = sitk.BinShrink(image, factors) if factors != (1, 1, 1) else image  # 1, 1, 1: a copy
    return sitk.ShiftScale(sitk.Clamp(small, sitk.sitkFloat32, lo, hi), -lo, 1.0 / (hi - lo))


def sub_grid(grid: Grid, lo_lps: np.ndarray, hi_lps: np.ndarray) -> tuple[Grid, tuple[slice, slice, slice]]:
    """The part of ``grid`` covering the LPS box [lo, hi] (one voxel of margin), and the
    ``[k, j, i]`` slices of an array on ``grid`` that cut it out."""
    corners = np.array(np.meshgrid(*zip(lo_lps, hi_lps), indexing="ij")).reshape(3, -1).T
    idx = grid.points_to_index(corners)
    start = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, np.asarray(grid.size) - 1)
    stop = np.clip(np.ceil(idx.max(0)).astype(int) + 2, start + 1, grid.size)
    origin = grid.points_to_lps(start[None].astype(np.float64))[0]
    sub = Grid(tuple(int(v) for v in stop - start), grid.spacing_mm, tuple(float(v) for v in origin), grid.direction)
    return sub, (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))


# --- the loss -------------------------------------------------------------------------------

def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over the ``(2r+1)³`` cube around every voxel of ``(C, D, H, W)``, zero outside the
    volume (so the operator is its own adjoint); separable, as in-place sums of shifted views
    (for short windows as fast as a compiled kernel, and cheaper than conv3d, pooling or
    cumulative sums; measured)."""
    y = x
    for dim in (1, 2, 3):
        n = y.shape[dim]
        acc = y.clone()
        for t in range(1, min(radius, n - 1) + 1):
            acc.narrow(dim, t, n - t).add_(y.narrow(dim, 0, n - t))
            acc.narrow(dim, 0, n - t).add_(y.narrow(dim, t, n - t))
        y = acc
    return y


class LocalNCC2(torch.autograd.Function):
    """``Σ_x w(x)·NCC²(x)`` of a warped image ``J`` against a fixed image ``I``, with its
    gradient in closed form (autograd through the box sums costs ~2x more in copies).

    Per window c (``n_c`` voxels, zero-padded at the border): ``A = Σ IJ − Σ I Σ J / n``,
    ``B = Σ I² − (Σ I)² / n``, ``C = Σ J² − (Σ J)² / n``, ``NCC² = A² / den`` with
    ``den = B·max(C, ε·n)``, ``ε`` a variance. Windows where the fixed image is flat
    (``B ≤ ε·n``) hold no information and must carry no ``weight`` (:func:`informative`);
    elsewhere a flat warped window gives 0, not 0/0, and identical images are a stationary
    point (an offset ``B·C + ε`` instead would reward contrast and move them). Then

        ∂/∂J(x) = I(x)·box(α) − box(α·μ_I) − J(x)·box(γ) + box(γ·μ_J),
        α = 2wA/den,  γ = 2wA²B/den² (0 where the floor holds),

    the box sums taken over the windows that contain x.
    """

    @staticmethod
    def forward(ctx, warped, fixed, weight, fixed_sums, count, radius, eps):
        s_f, s_ff = fixed_sums
        products = torch.empty((3, *warped.shape), dtype=warped.dtype, device=warped.device)
        products[0] = warped
        torch.mul(warped, warped, out=products[1])
        torch.mul(fixed, warped, out=products[2])
        s_w, s_ww, s_fw = box_sum(products, radius)
        del products
        mu_f, mu_w = s_f / count, s_w / count
        a = s_fw.sub_(s_f * mu_w)
        b = (s_ff - s_f * mu_f).clamp_min_(0.0)
        c = s_ww.sub_(s_w * mu_w).clamp_min_(0.0)
        floor = eps * count
        den = b * torch.maximum(c, floor) + (b <= floor)  # windows with b <= floor carry no weight
        ncc2 = a * a / den
        alpha = 2.0 * weight * a / den
        # γ = α·(A·B/den): for identical images A = C, so the ratio is exactly 1 and the
        # gradient below exactly 0 (in another order rounding leaves a residue that Adam,
        # which normalises step sizes, would turn into drift).
        gamma = torch.where(c > floor, alpha * (a * b / den), 0.0)
        ctx.save_for_backward(warped, fixed, alpha, gamma, mu_f, mu_w)
        ctx.radius = radius
        return torch.dot(ncc2.view(-1), weight.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        warped, fixed, alpha, gamma, mu_f, mu_w = ctx.saved_tensors
        terms = torch.empty((4, *alpha.shape), dtype=alpha.dtype, device=alpha.device)
        terms[0] = alpha
        torch.mul(alpha, mu_f, out=terms[1])
        terms[2] = gamma
        torch.mul(gamma, mu_w, out=terms[3])
        s_a, s_am, s_g, s_gm = box_sum(terms, ctx.radius)
        g = (fixed * s_a).sub_(warped * s_g).add_(s_gm.sub_(s_am))
        return g.mul_(grad), None, None, None, None, None, None


def window_sums(fixed: torch.Tensor, radius: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(box sums of ``I`` and ``I²``, voxels per window) of a ``(D, H, W)`` fixed image."""
    count = box_sum(torch.ones((1, *fixed.shape), dtype=fixed.dtype, device=fixed.device), radius)[0]
    return tuple(box_sum(torch.stack([fixed, fixed * fixed]), radius)), count


def informative(fixed_sums: tuple[torch.Tensor, torch.Tensor], count: torch.Tensor, eps: float) -> torch.Tensor:
    """Windows whose fixed-image variance exceeds ``eps`` (bool ``(D, H, W)``)."""
    s_f, s_ff = fixed_sums
    return s_ff - s_f * s_f / count > eps * count


def local_ncc2(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """``Σ w·NCC²`` (see :class:`LocalNCC2`) of ``(D, H, W)`` images, over informative windows."""
    sums, count = window_sums(fixed, radius)
    weight = weight * informative(sums, count, eps)
    return LocalNCC2.apply(warped, fixed, weight, sums, count, radius, eps)


def diffusion(v_mm: torch.Tensor, spacing_mm: tuple[float, float, float], edges: torch.Tensor | None = None,
              across: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared forward difference of ``v`` (``(D, H, W, 3)`` mm) per mm, over the grid.

    ``edges`` (bool ``(3, D, H, W)``, :func:`surface_edges`): where the neighbour along z, y, x
    lies across the lung surface; there a difference weighs ``across[axis, component]``
    (:func:`across_weights`) instead of 1."""
    sx, sy, sz = spacing_mm
    total = 0.0
    for axis, step in enumerate((sz, sy, sx)):
        n = v_mm.shape[axis]
        ahead = v_mm.narrow(axis, 1, n - 1)
        here = v_mm.narrow(axis, 0, n - 1)
        squared = ((ahead - here) / step).square()
        if edges is not None:
            crossing = edges[axis].narrow(axis, 0, n - 1)[..., None]
            squared = torch.where(crossing, squared * across[axis], squared)
        total = total + squared.mean()
    return total * 3.0


def surface_edges(lungs: np.ndarray) -> np.ndarray:
    """Where a grid voxel's next neighbour along z, y and x lies on the other side of the lung
    surface: uint8 ``(3, D, H, W)`` from the lung field ``lungs`` (bool ``(D, H, W)``); the last
    plane along each axis has no next neighbour (0)."""
    edges = np.zeros((3, *lungs.shape), np.uint8)
    edges[0, :-1] = lungs[:-1] != lungs[1:]
    edges[1, :, :-1] = lungs[:, :-1] != lungs[:, 1:]
    edges[2, :, :, :-1] = lungs[:, :, :-1] != lungs[:, :, 1:]
    return edges


def across_weights(grid: Grid, tangential: float) -> np.ndarray:
    """``(3, 3)`` weights of a difference across the lung surface, per array axis (z, y, x:
    the grid's index axes k, j, i) and displacement component (L, P, S): ``e_c² + t·(1 − e_c²)``
    with ``e`` the axis's LPS direction and ``t`` = ``tangential``. A neighbour across the
    surface along ``e`` keeps the jump of the displacement along ``e`` (the surface's normal,
    where the surface faces that axis) fully penalised, so no gap opens, and the jump across
    it (the slide) only ``t`` times."""
    directions = grid.direction_matrix[:, ::-1].T  # rows: the LPS direction of k, j, i
    return (directions**2 + tangential * (1.0 - directions**2)).astype(np.float32)


# --- the optimisation -----------------------------------------------------------------------

@dataclass
class Refinement:
    """The optimised ``v`` (``(D, H, W, 3)`` LPS mm, float32) on ``grid`` (the finest level's
    fixed crop), and a per-level record of the optimisation."""

    v_mm: torch.Tensor
    grid: Grid
    levels: list[dict]

    def sample_on(self, out: Grid, add: np.ndarray | None = None) -> np.ndarray:
        """``v`` on another grid, ``[k, j, i, 3]`` mm float32, trilinear, extended by its border
        values beyond the crop (as the network's field is); plus ``add`` (a field on ``out``)."""
        return resample_field(self.v_mm, self.grid, out, add).numpy()


def resample_field(v_mm: torch.Tensor, grid: Grid, target: Grid, add: np.ndarray | None = None) -> torch.Tensor:
    """Trilinear samples of a ``(D, H, W, 3)`` field on ``grid`` at every voxel of ``target``
    (on ``v_mm``'s device), extended by its border values, plus ``add`` (a CPU field on
    ``target``); separable where the grids share their axes (every grid of a registration is
    cut from the fixed image's, so always there)."""
    index_map = grid.lps_to_index @ target.index_to_lps
    if fields.is_axis_aligned(index_map):
        return fields.resample_separable(v_mm.to(torch.float32), index_map, target.shape_zyx, add)
    q = fields.grid_points(target, index_map, v_mm.device).movedim(-1, 0)
    out = fields.sample(v_mm.movedim(-1, 0).to(torch.float32), q.to(torch.float32), padding_mode="border")
    out = out.movedim(0, -1).contiguous()
    return out if add is None else out + torch.from_numpy(add)


def _grid_sample(volume: torch.Tensor, q_vox: torch.Tensor, slabs: int) -> torch.Tensor:
    """torch's ``grid_sample`` (trilinear, border) of a ``(D, H, W)`` volume at ``(D', H', W', 3)``
    voxel positions ``(x, y, z)``, the points split into ``slabs`` batch entries (its 3D
    sampler parallelises over the batch only). The reference of :class:`Sample`."""
    d, h, w = volume.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)], dtype=q_vox.dtype,
                         device=q_vox.device)
    grid_norm = q_vox * scale - 1.0
    n = grid_norm.shape[0]
    slabs = max(1, min(slabs, n))
    if slabs == 1:
        return F.grid_sample(volume[None, None], grid_norm[None], align_corners=True, padding_mode="border")[0, 0]
    size = -(-n // slabs)
    pad = size * slabs - n
    g = F.pad(grid_norm, (0, 0, 0, 0, 0, 0, 0, pad)) if pad else grid_norm
    g = g.reshape(slabs, size, *g.shape[1:])
    out = F.grid_sample(volume[None, None].expand(slabs, -1, -1, -1, -1), g, align_corners=True,
                        padding_mode="border")
    return out.reshape(slabs * size, *out.shape[3:])[:n]


def sample_moving(volume: torch.Tensor, q_vox: torch.Tensor, slabs: int) -> torch.Tensor:
    """The warped image ``volume(q)`` on the torch path: ``(D, H, W)`` volume, ``(D', H', W', 3)``
    voxel positions ``(x, y, z)``, both on one device; ``slabs`` batch entries on the CPU, one
    elsewhere (where one call already fills the device)."""
    return _grid_sample(volume, q_vox, slabs if volume.device.type == "cpu" else 1)


class Adam:
    """Adam (Kingma and Ba) on one tensor, in place: the update of ``torch.optim.Adam`` with
    its default betas, without its machinery (whose first step imports torch's compiler
    stack, ~0.8 s, more than a whole level of the refinement). Its state lies on the
    parameter's device."""

    def __init__(self, param: torch.Tensor, lr: float, eps: float, betas: tuple[float, float] = (0.9, 0.999)):
        self.param, self.lr, self.eps, self.betas = param, lr, eps, betas
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        g = self.param.grad
        self.m.lerp_(g, 1.0 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (self.v.sqrt() / np.sqrt(1.0 - b2**self.t)).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1.0 - b1**self.t))


@dataclass
class _Level:
    """Everything one level's optimisation needs, computed once per level."""

    grid: Grid  # the fixed crop at this level's spacing
    # All tensors below lie on the refinement's device.
    fixed: torch.Tensor  # (D, H, W) in [0, 1]
    moving: torch.Tensor  # (D', H', W') in [0, 1], the whole moving image at this spacing
    weight: torch.Tensor  # (D, H, W): body mask / its voxel count
    base_vox: torch.Tensor | None  # (D, H, W, 3): x + d_net(x) in voxels (x, y, z) of `moving`; torch path only
    mm_to_vox: torch.Tensor  # (3,) if axis-aligned (a scale per axis), else (3, 3)
    lps_to_moving_vox: np.ndarray  # (3, 4) LPS mm -> voxels (x, y, z) of `moving`
    d_net: torch.Tensor  # (D, H, W, 3) the network's displacement on `grid`, mm
    fixed_sums: tuple[torch.Tensor, torch.Tensor] | None  # torch path only
    count: torch.Tensor | None  # torch path only
    windows: np.ndarray | None = None  # (4, D, H, W) of fused.window_statistics; compiled path only
    edges: np.ndarray | None = None  # (3, D, H, W) uint8, surface_edges: sliding at the lung surface
    across: np.ndarray | None = None  # (3, 3) across_weights


def _level(fixed: sitk.Image, moving: sitk.Image, lo: np.ndarray, hi: np.ndarray, spacing: float,
           config: RefineConfig, network_disp, body_mask, device: torch.device, compiled: bool = False,
           finest: bool = False, lungs=None) -> _Level:
    """The level at ``spacing`` mm: images shrunk on the CPU (ITK), every tensor on ``device``;
    ``compiled``: for :func:`_adam_compiled`, which computes the sample positions itself;
    ``finest``: the last level (:func:`shrink_factors`); ``lungs(grid)``: the fixed lung
    field, for sliding at its surface (``config.sliding_weight`` < 1)."""
    f_small, m_small = side_by_side(lambda image: _normalised(image, spacing, config.hu_range, finest), (fixed, moving))
    grid, cut = sub_grid(Grid.from_image(f_small), lo, hi)

    def tensor(array: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(device)

    f = tensor(sitk.GetArrayFromImage(f_small)[cut])
    m = tensor(sitk.GetArrayFromImage(m_small))
    mask = tensor(body_mask(grid)).to(torch.float32)
    to_vox = Grid.from_image(m_small).lps_to_index[:3]
    d_net = tensor(network_disp(grid), np.float32)
    base = None
    if not compiled:
        x = fields.grid_points(grid, grid.index_to_lps, device) + d_net
        to_vox_t = torch.as_tensor(to_vox, dtype=torch.float64, device=device)
        base = (x @ to_vox_t[:, :3].T + to_vox_t[:, 3]).to(torch.float32)
    lin = to_vox[:, :3]
    diagonal = np.allclose(lin, np.diag(np.diag(lin)), atol=1e-12 * np.abs(lin).max())
    mm_to_vox = torch.tensor(np.diag(lin) if diagonal else lin, dtype=torch.float32, device=device)
    fixed_sums = count = windows = None
    if compiled:
        # The window statistics of the compiled passes, computed once: their count and
        # variance sum B decide which windows are informative, as window_sums' do below.
        windows = fused.window_statistics(f.numpy(), mask.numpy(), config.radius_vox, torch.get_num_threads())
        mask = mask * torch.from_numpy(windows[2] > config.eps * windows[0])
    else:
        fixed_sums, count = window_sums(f, config.radius_vox)
        mask = mask * informative(fixed_sums, count, config.eps)
    weight = mask / mask.sum().clamp_min(1.0)
    if windows is not None:
        windows[3] = weight.numpy()
    edges = across = None
    if lungs is not None and config.sliding_weight != 1.0:
        edges, across = surface_edges(lungs(grid)), across_weights(grid, config.sliding_weight)
    return _Level(grid, f, m, weight, base, mm_to_vox, to_vox, d_net, fixed_sums, count, windows, edges, across)


def _objective(lv: _Level, v_mm: torch.Tensor, config: RefineConfig, slabs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NCC² over the body, diffusion of the total field d_net + v) for ``v`` on ``lv.grid``."""
    step = v_mm * lv.mm_to_vox if lv.mm_to_vox.dim() == 1 else v_mm @ lv.mm_to_vox.T
    warped = sample_moving(lv.moving, lv.base_vox + step, slabs)
    similarity = LocalNCC2.apply(warped, lv.fixed, lv.weight, lv.fixed_sums, lv.count, config.radius_vox, config.eps)
    # The total field is regularised, not only v: the network's field can be sharp where its
    # input ends (the crop border), and a smooth v alone could never undo that.
    edges = across = None
    if lv.edges is not None:
        edges = torch.from_numpy(lv.edges).to(v_mm.device).bool()
        across = torch.from_numpy(lv.across).to(v_mm.device)
    return similarity, diffusion(lv.d_net + v_mm, lv.grid.spacing_mm, edges, across)


def refine(fixed: sitk.Image, moving: sitk.Image, crop: Grid, network_disp: Callable[[Grid], np.ndarray],
           body_mask: Callable[[Grid], np.ndarray], config: RefineConfig = DEFAULT,
           progress: Callable[[float, str], None] | None = None, device: torch.device | str = "cpu",
           lungs: Callable[[Grid], np.ndarray] | None = None) -> Refinement:
    """Optimise ``v`` coarse to fine on the box of the fixed lung crop ``crop``.

    ``fixed``/``moving``: the CT images in HU (any geometry);
    ``network_disp(grid)``: the network's ``φ_net(x) − x`` on ``grid`` (``[k, j, i, 3]`` LPS mm);
    ``body_mask(grid)``: the fixed body mask on ``grid`` (bool ``[k, j, i]``);
    ``progress(fraction of the refinement done, message)``;
    ``device``: the torch device of the optimisation (the images are shrunk on the CPU, then
    every tensor of a level lies there); the returned ``v`` is on the CPU;
    ``lungs(grid)``: the fixed lung field on ``grid`` (bool ``[k, j, i]``), whose surface the
    lungs slide along where ``config.sliding_weight`` < 1.
    """
    device = torch.device(device)
    report = progress or (lambda fraction, message: None)
    fixed, moving = side_by_side(lambda image: sitk.Cast(image, sitk.sitkFloat32), (fixed, moving))
    lo, hi = crop.bounding_box_lps()
    half = 0.5 * np.abs(crop.direction_matrix @ np.asarray(crop.spacing_mm))
    lo, hi = lo - half, hi + half
    slabs = max(1, torch.get_num_threads())
    total, done = max(1, sum(config.iterations)), 0
    v: torch.Tensor | None = None
    grid: Grid | None = None
    record = []
    n_levels = len(config.levels_mm)
    factors = [(shrink_factors(fixed, spacing, level == n_levels - 1), shrink_factors(moving, spacing, level == n_levels - 1))
               for level, spacing in enumerate(config.levels_mm)]
    # A level whose images are no finer than the previous level's would repeat it: skipped.
    runs = [level == 0 or factors[level] != factors[level - 1] for level in range(n_levels)]
    # The last level that runs takes the final smoothness (RefineConfig.at_level), also where
    # the images are too coarse for the nominal last level and it is skipped.
    last_run = max(level for level in range(n_levels) if runs[level])
    for level, (spacing, iterations) in enumerate(zip(config.levels_mm, config.iterations)):
        finest = level == n_levels - 1
        if not runs[level]:
            done += iterations
            record.append({"spacing_mm": record[-1]["spacing_mm"], "size": record[-1]["size"], "iterations": 0,
                           "skipped": "the images are no finer than the previous level"})
            continue
        t0 = time.perf_counter()
        compiled = fused.available() and device.type == "cpu"
        lv = _level(fixed, moving, lo, hi, spacing, config, network_disp, body_mask, device, compiled, finest, lungs)
        t_setup = time.perf_counter() - t0
        v0 = resample_field(v, grid, lv.grid) if v is not None else torch.zeros((*lv.grid.shape_zyx, 3), device=device)
        grid = lv.grid

        # The level's real cells (the images' voxels box-averaged by whole factors, SPACING_TOLERANCE),
        # not its nominal spacing: "2 mm" runs on 2.73 x 2.73 x 5 mm cells of a 2.73 x 2.73 x 5 mm image.
        cells = " x ".join(f"{c:.3g}" for c in lv.grid.spacing_mm)

        def tick(it: int, similarity: float, level=level, cells=cells, iterations=iterations, done=done) -> None:
            if (it + 1) % max(1, iterations // 10) == 0 or it + 1 == iterations:
                report((done + it + 1) / total, f"refining: level {level + 1}/{n_levels} "
                                                f"({cells} mm cells), iteration {it + 1}/{iterations}, "
                                                f"NCC² {similarity:.3f}")

        optimise = _adam_compiled if compiled else _adam_torch
        level_config = config.at_level(level == last_run)
        v, start, end, smooth = optimise(lv, v0, level_config, iterations, slabs, tick)
        done += iterations
        record.append({"spacing_mm": [round(s, 3) for s in grid.spacing_mm], "size": list(grid.size),
                       "iterations": int(iterations), "ncc2_before": round(start, 4), "ncc2_after": round(end, 4),
                       "diffusion": round(smooth, 6), "smoothness": level_config.smoothness,
                       "seconds": round(time.perf_counter() - t0, 3),
                       "setup_seconds": round(t_setup, 3)})
        del lv
    return Refinement(v.cpu(), grid, record)


def _loss_scale(v_mm: torch.Tensor) -> float:
    """The loss is summed (not averaged) over the grid, which puts a voxel's gradient at O(1);
    Adam's eps then is a floor below which a gradient is float rounding, not signal (Adam
    would otherwise scale rounding noise up to full steps and move identical images)."""
    return float(v_mm[..., 0].numel())


def _adam_torch(lv: _Level, v0: torch.Tensor, config: RefineConfig, iterations: int, slabs: int,
                tick: Callable[[int, float], None]) -> tuple[torch.Tensor, float, float, float]:
    """The device-generic path: ``iterations`` Adam steps on ``v`` from ``v0`` with autograd.
    Returns (v, NCC² before, NCC² after, diffusion of the total field after)."""
    params = v0.clone().requires_grad_(True)
    scale = _loss_scale(params)
    adam = Adam(params, config.learning_rate_mm, config.gradient_floor)
    start = None
    for it in range(iterations):
        params.grad = None
        similarity, smooth = _objective(lv, params, config, slabs)
        (scale * (config.smoothness * smooth - similarity)).backward()
        adam.step()
        start = similarity.item() if start is None else start
        tick(it, similarity.item())
    v = params.detach()
    with torch.no_grad():
        end, smooth = (float(value) for value in _objective(lv, v, config, slabs))
    return v, (end if start is None else start), end, smooth


def _adam_compiled(lv: _Level, v0: torch.Tensor, config: RefineConfig, iterations: int, slabs: int,
                   tick: Callable[[int, float], None]) -> tuple[torch.Tensor, float, float, float]:
    """The same steps as :func:`_adam_torch`, each three compiled passes (:mod:`.fused`) on
    the total displacement ``d_net + v``; CPU tensors."""
    index_to_moving = lv.lps_to_moving_vox @ lv.grid.index_to_lps
    u0 = np.empty((3, *lv.grid.shape_zyx), np.float32)  # one plane per component, taken over by the optimiser
    np.add(lv.d_net.numpy().transpose(3, 0, 1, 2), v0.numpy().transpose(3, 0, 1, 2), out=u0)
    opt = fused.FusedAdam(lv.fixed.numpy(), lv.moving.numpy(), index_to_moving, lv.lps_to_moving_vox[:, :3],
                          lv.windows, u0,
                          lv.grid.spacing_mm,
                          radius=config.radius_vox, eps_variance=config.eps, scale=_loss_scale(v0),
                          smoothness=config.smoothness, lr=config.learning_rate_mm, eps=config.gradient_floor,
                          threads=slabs, edges=lv.edges, across=lv.across)
    start = None
    for it in range(iterations):
        similarity = opt.step()
        start = similarity if start is None else start
        tick(it, similarity)
    end = opt.similarity()
    v = torch.from_numpy(opt.u).permute(1, 2, 3, 0) - lv.d_net  # (D, H, W, 3)
    return v, (end if start is None else start), end, fused.diffusion(opt.u, lv.grid.spacing_mm, slabs, lv.edges,
                                                                      lv.across)
