"""Synthetic training pairs exactly as the paper makes them (Sec. II-E, Table I, Fig. 3).

Per pair, from one CT ``I`` cropped around its lungs and resampled to N³:

* ``T1 = t1`` (augmentation) and ``T2 = t2,1 ∘ t2,2`` (the transform to learn) are random
  cubic splines whose control-point values are displacements drawn uniformly (gryds'
  convention: the field interpolates the values; first control point on voxel 0, last on
  voxel N-1; mirror boundary, as scipy's ``map_coordinates(order=3, mode='mirror')``);
* moving ``= I(T1(x))``, fixed ``= I(T1(T2(x)))``, target ``u(x) = T2(x) - x``;
* mask ``= M(T1(x))``, the scanner-bore disc pulled back by T1 (the paper's Eq. 4);
* network inputs: Gaussian gradient magnitude (σ = 0.5 voxel) of fixed and moving.

So ``fixed(x) = moving(x + u(x))``. All fields are voxels of the N³ grid, components
(x, y, z), arrays ``[k, j, i]``. Everything after the (cached) crop is torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core import fields
from ..core.errors import InputError
from ..core.grid import Grid
from ..io.images import read_image
from ..model.config import SplineConfig, SynthesisConfig
from ..model.preprocess import bore_mask_zyx, crop_hu, lung_crop, network_input
from ..simulation.breathing import breathing_field_lps
from ..simulation.phantom import generate

# --- cubic splines ------------------------------------------------------------------------

def _bspline3(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a < 1, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0))


def _mirror(m: np.ndarray, g: int) -> np.ndarray:
    if g == 1:
        return np.zeros_like(m)
    period = 2 * (g - 1)
    m = np.abs(m) % period
    return np.where(m >= g, period - m, m)


@functools.lru_cache(maxsize=16)
def _prefilter_inverse(g: int) -> np.ndarray:
    nodes = np.arange(g)
    prefilter = np.zeros((g, g))
    for d in (-1, 0, 1):
        np.add.at(prefilter, (nodes, _mirror(nodes + d, g)), _bspline3(np.full(g, float(d))))
    return np.linalg.inv(prefilter)


def spline_weights(g: int, t: np.ndarray) -> np.ndarray:
    """``(len(t), g)`` weights of the interpolating cubic spline through g control values at
    positions ``t`` in control-grid units (control point c at t = c).

    Node-interpolating: coefficients come from a mirror-boundary prefilter, as in
    ``scipy.ndimage.map_coordinates(order=3, mode='mirror')``, which gryds uses.
    """
    t = np.asarray(t, dtype=np.float64)
    base = np.floor(t).astype(int)
    evaluate = np.zeros((t.size, g))
    for d in (-1, 0, 1, 2):
        m = base + d
        np.add.at(evaluate, (np.arange(t.size), _mirror(m, g)), _bspline3(t - m))
    return evaluate @ _prefilter_inverse(g)


@functools.lru_cache(maxsize=64)
def spline_matrix(g: int, n: int) -> np.ndarray:
    """``(n, g)``: the spline at the n voxels of an axis; control points at voxels
    ``0, (n-1)/(g-1), ..., n-1`` (the first on voxel 0, the last on voxel n-1)."""
    return spline_weights(g, np.arange(n) * (g - 1) / max(n - 1, 1))


def spline_field(values: torch.Tensor, n: int) -> torch.Tensor:
    """Dense ``(3, n, n, n)`` field from control values ``(3, gz, gy, gx)`` (separable)."""
    gz, gy, gx = values.shape[1:]
    wz, wy, wx = (torch.as_tensor(spline_matrix(g, n), dtype=values.dtype, device=values.device) for g in (gz, gy, gx))
    # One axis at a time: three small contractions instead of one 4-way einsum.
    out = torch.einsum("ix,czyx->czyi", wx, values)
    out = torch.einsum("jy,czyi->czji", wy, out)
    out = torch.einsum("kz,czji->ckji", wz, out)
    return out.contiguous()


def random_control_values(spec: SplineConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform control displacements ``(3, g, g, g)``, ranges scaled from 128³ to n³."""
    g = spec.grid
    half = torch.tensor(spec.range_vox, dtype=torch.float32) * (n / 128.0)
    r = torch.rand((3, g, g, g), generator=generator) * 2.0 - 1.0
    return r * half[:, None, None, None]


def random_transform(specs: list[SplineConfig], n: int, generator: torch.Generator) -> torch.Tensor:
    """Displacement of ``specs[0] ∘ specs[1] ∘ ...`` (the last acts on the coordinates first)."""
    u = None
    for spec in reversed(specs):
        v = spline_field(random_control_values(spec, n, generator), n)
        u = v if u is None else fields.compose(v, u)
    return u


# --- the cropped, resampled training volume -----------------------------------------------

@dataclass
class Volume:
    """A CT on the network grid: ``hu`` and ``bore`` are ``(N, N, N)`` float32 ``[k, j, i]``."""

    hu: torch.Tensor
    bore: torch.Tensor
    grid: Grid
    source: str
    #: ``(2, 3, N, N, N)``: :func:`breathing_basis`, made on first use.
    breathing: torch.Tensor | None = None


def breathing_basis(volume: Volume) -> torch.Tensor:
    """The breathing simulator's motion on the crop per mm of diaphragm (superior–inferior) and
    per mm of anterior amplitude: ``(2, 3, N, N, N)`` displacements ``u`` in voxels (x, y, z) of
    the crop grid, from the inhale (fixed) to the exhale (moving) image: ``u = −w``, the
    simulator's exhale-to-inhale field ``w`` negated (the pair is built from ``u`` itself, so it
    is exact). Computed once per volume."""
    if volume.breathing is None:
        image = volume.grid.apply_to(sitk.GetImageFromArray(volume.hu.numpy()))
        to_vox = volume.grid.lps_to_index[:3, :3]
        volume.breathing = torch.stack([
            torch.from_numpy(-(breathing_field_lps(image, si, ap).astype(np.float64) @ to_vox.T)).permute(3, 0, 1, 2)
            for si, ap in ((1.0, 0.0), (0.0, 1.0))]).float().contiguous()
    return volume.breathing


def prepare_volume(image: sitk.Image, cfg: SynthesisConfig, source: str = "") -> Volume:
    """Crop around the lungs (whole image if none are found) and resample to N³, linearly:
    the same crop as at inference (:mod:`preprocess`)."""
    grid, _ = lung_crop(image, cfg)
    return Volume(crop_hu(image, grid), torch.from_numpy(bore_mask_zyx(Grid.from_image(image), grid)), grid, source)


PHANTOM_PREFIX = "phantom:"


@functools.lru_cache(maxsize=256)
def _cached_volume(path: str, series: str | None, cfg_key: tuple) -> Volume:
    size, margin, crop = cfg_key
    cfg = SynthesisConfig(size=size, lung_margin_mm=margin, crop_to_lungs=crop)
    if path.startswith(PHANTOM_PREFIX):
        image = generate(int(path[len(PHANTOM_PREFIX):])).image
    else:
        image = read_image(path, series)
    return prepare_volume(image, cfg, path)


def load_volume(path: str | Path, cfg: SynthesisConfig, series: str | None = None) -> Volume:
    """``prepare_volume`` of a file (or of ``phantom:SEED``), cached per process: repeated
    pairs re-read and re-resample nothing."""
    return _cached_volume(str(path), series, (cfg.size, cfg.lung_margin_mm, cfg.crop_to_lungs))


def load_ref(ref: str, cfg: SynthesisConfig) -> Volume:
    """:func:`load_volume` of an image reference: a path, ``folder::SeriesUID`` or ``phantom:SEED``."""
    path, _, uid = ref.partition("::")
    return load_volume(path, cfg, uid or None)


# --- pairs ---------------------------------------------------------------------------------

@torch.no_grad()
def make_pair(volume: Volume, cfg: SynthesisConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One training pair. Keys (all ``[k, j, i]``, float32):

    ``fixed``, ``moving`` (HU, N³), ``input`` (2, N³: fixed and moving gradient magnitude),
    ``target`` (3, N³: u in voxels, x/y/z), ``mask`` (N³, M(T1(x))). A share
    ``cfg.identity_fraction`` of the pairs is nearly aligned (``t2`` shrunk), a share
    ``cfg.breathing_fraction`` moves as the breathing simulator does (:func:`breathing_basis`).
    """
    n = volume.hu.shape[-1]
    u1 = random_transform(cfg.t1, n, generator)
    if cfg.breathing_fraction > 0 and float(torch.rand((), generator=generator)) < cfg.breathing_fraction:
        lo, hi = cfg.breathing_si_mm
        si = lo + (hi - lo) * float(torch.rand((), generator=generator))
        basis = breathing_basis(volume)
        u2 = si * basis[0] + (si / 3.0) * basis[1]  # the anterior chest a third of the diaphragm, as in the benchmarks
    else:
        u2 = random_transform(cfg.t2, n, generator)
    if cfg.identity_fraction > 0 and float(torch.rand((), generator=generator)) < cfg.identity_fraction:
        u2 = u2 * (cfg.identity_scale * float(torch.rand((), generator=generator)))
    u12 = fields.compose(u1, u2)  # T1 ∘ T2
    moving = fields.warp(volume.hu, u1)
    fixed = fields.warp(volume.hu, u12)
    mask = fields.warp(volume.bore, u1)
    inputs = torch.stack([network_input(fixed, cfg), network_input(moving, cfg)])
    return {"fixed": fixed, "moving": moving, "input": inputs, "target": u2, "mask": mask}


def pair_generator(seed: int, index: int) -> torch.Generator:
    """The generator of pair ``index`` of a run seeded ``seed`` (independent of workers)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


class SyntheticPairs(torch.utils.data.Dataset):
    """Pair ``i`` is a pure function of (seed, i, images, config): deterministic with workers."""

    def __init__(self, images: list[str], cfg: SynthesisConfig, seed: int = 0, length: int = 10**9):
        if not images:
            raise InputError("no training images")
        self.images = list(images)
        self.cfg = cfg
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = pair_generator(self.seed, index)
        which = int(torch.randint(len(self.images), (1,), generator=gen))
        pair = make_pair(load_ref(self.images[which], self.cfg), self.cfg, gen)
        pair["image_index"] = torch.tensor(which)
        return pair
