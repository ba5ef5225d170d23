"""A procedural thorax CT phantom: different anatomy per seed, at any size and spacing.

Body wall (fat and muscle), ribs, spine with discs, mediastinum and heart, two lungs above
a diaphragm dome (the right one higher, over the liver), an airway tree and a vessel tree
that branch and taper inside the lungs, realistic HU values, a little blur and noise.
Vessel bifurcations inside the lungs are returned as landmark candidates.

Physical frame: LPS mm, identity direction, the body centred on the origin in-plane
(+x left, +y posterior, +z superior). Arrays are ``[k, j, i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

HU = {"air": -1000.0, "lung": -860.0, "fat": -100.0, "soft": 45.0, "blood": 40.0, "liver": 60.0, "bone": 700.0,
      "marrow": 250.0, "disc": 90.0, "airway_wall": -50.0}


@dataclass
class Phantom:
    image: sitk.Image
    lungs: np.ndarray  # bool [k, j, i]
    bifurcations_lps: np.ndarray  # (n, 3) vessel bifurcations inside the lungs


def _rotate_towards(direction: np.ndarray, angle: float, twist: float) -> np.ndarray:
    """A unit vector at ``angle`` from ``direction``, rotated by ``twist`` around it."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return np.cos(angle) * d + np.sin(angle) * (np.cos(twist) * u + np.sin(twist) * v)


def _grow_tree(rng, start, direction, radius, inside, min_radius, length_factor, max_depth=12):
    """Segments (p0, p1, r) and bifurcation points of a random tapering binary tree.

    ``inside(p)`` says whether a point may be reached (the lung field); branches stop at
    its border or below ``min_radius``.
    """
    segments, bifurcations = [], []
    stack = [(np.asarray(start, float), np.asarray(direction, float), radius, 0)]
    while stack:
        p0, d, r, depth = stack.pop()
        length = r * length_factor * rng.uniform(0.7, 1.3)
        p1 = p0 + d / np.linalg.norm(d) * length
        if depth > 0 and not inside(p1):
            # Shorten to the border rather than leave the lungs.
            for f in (0.6, 0.3):
                p1 = p0 + d / np.linalg.norm(d) * length * f
                if inside(p1):
                    break
            else:
                continue
        segments.append((p0, p1, r))
        if r * 0.78 < min_radius or depth >= max_depth:
            continue
        if depth > 0 and inside(p1):
            bifurcations.append(p1)
        spread = rng.uniform(0.45, 0.75)
        twist = rng.uniform(0, 2 * np.pi)
        ratio = rng.uniform(0.55, 0.85)
        for sign, rr in ((1.0, 0.8 * r), (-1.0, 0.8 * r * ratio / 0.7)):
            nd = _rotate_towards(d, sign * spread * rng.uniform(0.7, 1.2), twist)
            stack.append((p1, nd, min(rr, 0.85 * r), depth + 1))
    return segments, bifurcations


def _draw_segments(volume, segments, grid_xyz, spacing, origin, value, wall=None, where=None):
    """Rasterise capsules (p0, p1, r) into ``volume`` (mm coordinates), per segment bounding box."""
    nz, ny, nx = volume.shape
    for p0, p1, r in segments:
        pad = r + (wall[1](r) if wall else 0) + 1.0
        lo = np.floor((np.minimum(p0, p1) - pad - origin) / spacing).astype(int)
        hi = np.ceil((np.maximum(p0, p1) + pad - origin) / spacing).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [nx, ny, nz])
        if np.any(hi <= lo):
            continue
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        pts = np.stack([g[sl] for g in grid_xyz], -1)
        seg = p1 - p0
        t = np.clip(((pts - p0) @ seg) / max(seg @ seg, 1e-9), 0, 1)
        dist = np.linalg.norm(pts - (p0 + t[..., None] * seg), axis=-1)
        region = volume[sl]
        ok = np.ones_like(dist, bool) if where is None else where[sl]
        if wall is not None:
            region[(dist < r + wall[1](r)) & ok] = wall[0]
        region[(dist < r) & ok] = value


def generate(seed: int = 0, size: tuple[int, int, int] = (192, 160, 128),
             spacing_mm: tuple[float, float, float] = (1.6, 1.6, 2.5), noise_hu: float = 15.0) -> Phantom:
    """One thorax phantom; anatomy varies with ``seed``. ``size`` is (nx, ny, nz)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    spacing = np.asarray(spacing_mm, float)
    extent = (np.asarray(size) - 1) * spacing
    origin = -extent / 2
    x = origin[0] + np.arange(nx) * spacing[0]
    y = origin[1] + np.arange(ny) * spacing[1]
    z = origin[2] + np.arange(nz) * spacing[2]
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")

    # Body and chest wall (ellipses, slightly tapering towards the apex).
    fov = min(extent[0], extent[1] * 1.3)
    ax, ay = rng.uniform(0.40, 0.46) * fov, rng.uniform(0.29, 0.34) * fov
    taper = 1.0 - 0.12 * np.clip((Z - origin[2]) / extent[2], 0, 1)
    body_r = (X / (ax * taper)) ** 2 + (Y / (ay * taper)) ** 2
    wall_mm = rng.uniform(16, 26)
    fat_mm = rng.uniform(5, 12)
    cav_r = (X / (ax * taper - wall_mm)) ** 2 + (Y / (ay * taper - wall_mm)) ** 2
    fat_r = (X / (ax * taper - fat_mm)) ** 2 + (Y / (ay * taper - fat_mm)) ** 2
    vol = np.full(Z.shape, HU["air"], np.float32)
    vol[body_r <= 1] = HU["fat"]
    vol[fat_r <= 1] = HU["soft"]
    cavity = cav_r <= 1

    # Spine: vertebral bodies with discs, posterior midline; spinal canal behind.
    spine_y = ay * rng.uniform(0.62, 0.72)
    spine_r = rng.uniform(15, 20)
    disc_period = rng.uniform(24, 30)
    spine = (X**2 + (Y - spine_y) ** 2) <= spine_r**2
    disc = np.mod(Z - rng.uniform(0, disc_period), disc_period) < 5
    vol[spine] = HU["marrow"]
    vol[spine & ((X**2 + (Y - spine_y) ** 2) > (spine_r - 2.5) ** 2)] = HU["bone"]
    vol[spine & disc] = HU["disc"]
    canal = (X**2 + (Y - spine_y - spine_r - 6) ** 2) <= 7**2
    vol[canal] = HU["soft"]

    # Diaphragm domes (right = -x in LPS is higher, over the liver).
    base = origin[2] + extent[2] * rng.uniform(0.12, 0.22)
    dome_h = rng.uniform(25, 45)
    right_extra = rng.uniform(8, 18)
    side_x = np.where(X < 0, -0.5 * ax, 0.5 * ax)
    dome = base + (dome_h + np.where(X < 0, right_extra, 0)) * np.clip(
        1 - ((X - side_x) / (0.55 * ax)) ** 2 - ((Y + 0.1 * ay) / (0.9 * ay)) ** 2, 0, 1)
    apex = origin[2] + extent[2] * rng.uniform(0.88, 0.97)

    # Mediastinum (widening towards the base) and heart (left-anterior, lower half).
    med_half = rng.uniform(12, 18) + 22 * np.clip((apex - Z) / extent[2], 0, 1)
    mediastinum = (np.abs(X) < med_half * (1.0 - 0.35 * (Y / ay) ** 2)) & (Y < spine_y - spine_r)
    hc = np.array([rng.uniform(10, 30), -rng.uniform(10, 30), base + dome_h + rng.uniform(10, 30)])
    hr = np.array([rng.uniform(45, 60), rng.uniform(38, 50), rng.uniform(40, 55)])
    heart = ((X - hc[0]) / hr[0]) ** 2 + ((Y - hc[1]) / hr[1]) ** 2 + ((Z - hc[2]) / hr[2]) ** 2 <= 1
    # Rounded apices: the lung top falls off towards the chest wall.
    apex_surface = apex - 35.0 * np.clip(cav_r, 0, 1) ** 2
    lungs = cavity & (Z > dome) & (Z < apex_surface) & ~mediastinum & ~heart & ~spine & ~canal
    lungs &= ~((X**2 + (Y - spine_y) ** 2) <= (spine_r + 12) ** 2)
    vol[cavity & ~lungs & ~spine & ~canal] = HU["soft"]
    vol[cavity & (Z <= dome)] = HU["liver"]
    vol[heart & cavity] = HU["blood"]
    # Low-frequency parenchyma texture.
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(0, 1, Z.shape).astype(np.float32)), 3.0))
    texture *= 25.0 / max(float(texture.std()), 1e-6)
    vol[lungs] = HU["lung"] + texture[lungs]
    soft = (vol > -200) & (vol < 200)
    vol[soft] += 0.5 * texture[soft]  # mild soft-tissue texture

    # Ribs: inclined bony rings hugging the inside of the chest wall, with a sternal gap.
    theta = np.arctan2(Y, X)
    rib_band = (cav_r > 1) & (cav_r < ((1 + 12 / min(ax, ay)) ** 2))
    period = rng.uniform(22, 28)
    slope = rng.uniform(10, 20)
    rib_z = Z + slope * np.cos(theta - np.pi / 2)  # ribs descend anteriorly
    ribs = rib_band & (np.mod(rib_z, period) < rng.uniform(7, 9)) & (np.abs(theta + np.pi / 2) > 0.25)
    ribs &= (Z > base - 30) & (Z < apex + 10)
    vol[ribs] = HU["bone"]

    grid_xyz = (X, Y, Z)
    idx_of = lambda p: np.round((np.asarray(p) - origin) / spacing).astype(int)  # noqa: E731

    def in_lungs(p):
        i, j, k = idx_of(p)
        return 0 <= i < nx and 0 <= j < ny and 0 <= k < nz and bool(lungs[k, j, i])

    def in_lungs_or_mediastinum(p):
        i, j, k = idx_of(p)
        return 0 <= i < nx and 0 <= j < ny and 0 <= k < nz and bool(lungs[k, j, i] or mediastinum[k, j, i])

    # Airways: trachea down the midline to the carina, then a tapering tree in each lung.
    carina = np.array([0.0, spine_y - spine_r - rng.uniform(15, 25), base + dome_h + rng.uniform(45, 70)])
    carina[2] = min(carina[2], apex - 30)
    trachea = [(np.array([0.0, carina[1], apex + 20]), carina, rng.uniform(8, 10))]
    airway_segments = list(trachea)
    vessel_segments, bifurcations = [], []
    for side in (-1.0, 1.0):
        d = np.array([side * 1.0, 0.15, -0.8])
        segs, _ = _grow_tree(rng, carina, d, rng.uniform(5.5, 7.0), in_lungs_or_mediastinum, 0.9, 6.0, max_depth=9)
        airway_segments += segs
        hilum = carina + np.array([side * rng.uniform(20, 30), -rng.uniform(5, 15), -rng.uniform(5, 20)])
        # Lobar and segmental roots fanning out from the hilum in every direction.
        roots = 10
        for root in range(roots):
            up = np.cos(np.pi * (root + rng.uniform(0, 1)) / roots)
            d = np.array([side * rng.uniform(0.6, 1.0), rng.uniform(-0.8, 0.8), 1.6 * up])
            segs, bif = _grow_tree(rng, hilum, d, rng.uniform(2.5, 3.6), in_lungs_or_mediastinum, 0.5, 9.0,
                                   max_depth=12)
            vessel_segments += segs
            bifurcations += [b for b in bif if in_lungs(b)]
    thorax = cavity & (Z < apex + 25)
    _draw_segments(vol, vessel_segments, grid_xyz, spacing, origin, HU["blood"], where=thorax)
    _draw_segments(vol, airway_segments, grid_xyz, spacing, origin, HU["air"],
                   wall=(HU["airway_wall"], lambda r: 0.25 * r + 0.6), where=thorax)

    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    image = sitk.SmoothingRecursiveGaussian(image, float(0.5 * spacing.min()))
    arr = sitk.GetArrayFromImage(image) + rng.normal(0, noise_hu, vol.shape).astype(np.float32)
    out = sitk.GetImageFromArray(np.clip(arr, -1024, 3071).astype(np.int16))
    out.CopyInformation(image)
    bif = np.array(bifurcations).reshape(-1, 3)
    return Phantom(out, lungs, bif)
