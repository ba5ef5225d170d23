"""Seconds per 128³ training pair on one core: ours (torch) versus gryds + scipy.

Both generate the paper's pair (T1 = t1, T2 = t2,1 ∘ t2,2, moving = I(T1), fixed =
I(T1 ∘ T2), mask = M(T1), Gaussian gradient magnitudes σ = 0.5) from the same cropped
128³ volume, so the crop (cached in training) is excluded from both.

    python benchmarks/bench_synthesis.py [--pairs 5] [--size 128]

Writes benchmarks/results/synthesis.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.images import read_image  # noqa: E402
from ProgressiveRegistrationLib.model.config import SynthesisConfig  # noqa: E402
from ProgressiveRegistrationLib.training import synthesis  # noqa: E402


def gryds_pair(hu: np.ndarray, bore: np.ndarray, cfg: SynthesisConfig, rng: np.random.Generator):
    import gryds
    import scipy.ndimage as nd

    n = hu.shape[0]

    def spline(spec):
        g = spec.grid
        half = np.asarray(spec.range_vox) * n / 128.0 / (n - 1)  # gryds: normalised units
        values = rng.uniform(-1, 1, (3, g, g, g)) * half[::-1, None, None, None]  # array axes z, y, x
        return gryds.BSplineTransformation(values, order=3)

    t1 = spline(cfg.t1[0])
    t21, t22 = spline(cfg.t2[0]), spline(cfg.t2[1])
    image = gryds.Interpolator(hu, order=1, mode="nearest")
    mask = gryds.Interpolator(bore, order=1, mode="nearest")
    moving = image.transform(t1)
    fixed = image.transform(t22, t21, t1)
    moved_mask = mask.transform(t1)
    grid = gryds.Grid(hu.shape)
    target = (grid.transform(t22, t21).grid - grid.grid) * n
    g_fixed = nd.gaussian_gradient_magnitude(fixed / 1000.0, 0.5)
    g_moving = nd.gaussian_gradient_magnitude(moving / 1000.0, 0.5)
    return fixed, moving, moved_mask, target, g_fixed, g_moving


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--image", default=str(ROOT / "ProgressiveRegistration/Resources/Sample/lung_ct_small.mha"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = SynthesisConfig(size=args.size)
    volume = synthesis.prepare_volume(read_image(args.image), cfg)
    gen = synthesis.pair_generator(0, 0)
    synthesis.make_pair(volume, cfg, gen)  # warm-up (caches, allocator)
    t0 = time.perf_counter()
    for i in range(args.pairs):
        synthesis.make_pair(volume, cfg, synthesis.pair_generator(0, i))
    ours = (time.perf_counter() - t0) / args.pairs
    rng = np.random.default_rng(0)
    hu, bore = volume.hu.numpy(), volume.bore.numpy()
    gryds_pairs = max(1, args.pairs // 3)
    t0 = time.perf_counter()
    for _ in range(gryds_pairs):
        gryds_pair(hu, bore, cfg, rng)
    theirs = (time.perf_counter() - t0) / gryds_pairs
    # Spread of T2's displacements (paper Fig. 4): percentiles of u per axis over 20 draws, in
    # voxels of the 128³ grid (the paper plots mm of its 128³ crops, ~1.2-2.4 mm per voxel).
    draws = [synthesis.random_transform(cfg.t2, 64, synthesis.pair_generator(7, i)) * 2.0 for i in range(20)]
    u = torch.cat([d.reshape(3, -1)[:, ::5] for d in draws], 1).numpy()
    pct = np.percentile(u, [1, 5, 25, 50, 75, 95, 99], axis=1)
    table = [
        "# Synthetic training pair generation (benchmarks/bench_synthesis.py)",
        "",
        f"One {args.size}³ pair (paper Sec. II-E: T1, T2 = t2,1 ∘ t2,2, two images, mask, two gradient magnitudes), "
        f"one thread, same cropped volume, measured in one run on {platform.processor() or platform.machine()} "
        f"({torch.get_num_threads()} torch thread).",
        "",
        "| generator | seconds per pair | pairs timed |",
        "|---|---|---|",
        f"| ours (torch, separable splines, grid_sample) | {ours:.3f} | {args.pairs} |",
        f"| gryds 0.0.9 + scipy.ndimage | {theirs:.3f} | {gryds_pairs} |",
        "",
        f"Ratio gryds/ours: **{theirs / ours:.1f}×** faster. Target: < 0.5 s per pair, ≥ 10× faster.",
        "",
        f"Command: `python benchmarks/bench_synthesis.py --pairs {args.pairs} --size {args.size}`",
        "",
        "## Displacement spread of T2 (paper Fig. 4)",
        "",
        "Percentiles of u = T2(x) − x per axis over 20 draws, voxels of 128³ (drawn at 64³, scaled ×2):",
        "",
        "| axis | 1 % | 5 % | 25 % | 50 % | 75 % | 95 % | 99 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, name in enumerate("xyz"):
        table.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in pct[:, a]) + " |")
    table += ["", "z (superior–inferior, the breathing direction) is the widest, then y, then x, as in Fig. 4."]
    publish(table, "synthesis.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
