"""The transform and Jacobian stages of `progreg register`, before and after, in one run.

Sizes are those of the paper-size network (128³) on a 512×512×130 CT: the network field
u (3×128³, voxels) mapped to φ(x) − x on the fixed grid subsampled 2×2×1 (257×257×130,
LPS mm), then the Jacobian determinant of that field.

- transform: every output point mapped and sampled with grid_sample in float64 (the
  general path, kept for crops not aligned with the fixed axes, and without numba) against
  the axis-aligned path (trilinear weights per axis, one compiled pass: numba);
- Jacobian: the tensor expression (torch.gradient and the 3×3 product) against one
  compiled pass over the voxels (numba).

    python benchmarks/bench_fields.py [--threads 2] [--repeats 3]

Writes benchmarks/results/fields.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402


def median_seconds(fn, repeats: int):
    result = fn()  # warm-up: numba loads or compiles its kernel, torch allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    from ProgressiveRegistrationLib.core import fields, transforms
    from ProgressiveRegistrationLib.core.grid import Box, Grid, crop_grid
    from ProgressiveRegistrationLib.training.synthesis import spline_field

    torch.set_num_threads(args.threads)
    fixed = Grid((512, 512, 130), (0.7, 0.7, 2.5), (-179.0, -179.0, -160.0))
    fixed_crop = crop_grid(fixed, Box((90, 110, 15), (330, 300, 100)), 128)
    moving_crop = crop_grid(fixed, Box((86, 116, 18), (336, 296, 96)), 128)
    out = transforms.output_grid(fixed, fixed_crop)
    values = (torch.rand(3, 6, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 4.0
    u = spline_field(values, 128)

    general_s, general = median_seconds(
        lambda: transforms._displacement_general(u, fixed_crop, moving_crop, out, 16), args.repeats)
    aligned_s, aligned = median_seconds(lambda: transforms.displacement_lps(u, fixed_crop, moving_crop, out),
                                        args.repeats)
    disp = torch.from_numpy(aligned).movedim(-1, 0)
    m = out.index_to_lps[:3, :3]
    tensor_s, det_t = median_seconds(lambda: fields.jacobian_determinant(disp, m, compiled=False), args.repeats)
    kernel_s, det_k = median_seconds(lambda: fields.jacobian_determinant(disp, m), args.repeats)

    rows = [("transform", "grid_sample, float64, every point (before)", general_s, 0.0),
            ("transform", "axis-aligned: weights per axis, one compiled pass, numba (after)", aligned_s,
             float(np.abs(aligned - general).max())),
            ("Jacobian", "tensor expression: torch.gradient + 3×3 product (before)", tensor_s, 0.0),
            ("Jacobian", "one compiled pass over the voxels, numba (after)", kernel_s, float((det_k - det_t).abs().max()))]
    lines = ["# Transform and Jacobian stages (benchmarks/bench_fields.py)", "",
             f"u: 3×128³ (the paper-size network's grid); output grid {'×'.join(map(str, out.size))} "
             f"(512×512×130 fixed image subsampled {round(out.spacing_mm[0] / 0.7)}×{round(out.spacing_mm[1] / 0.7)}×1); "
             f"{args.threads} threads, median of {args.repeats}, all rows in one run ({platform.machine()}, "
             f"torch {torch.__version__}, numba {fields.numba.__version__ if fields.numba else 'absent'}).", "",
             "| stage | variant | seconds | speed-up | max abs difference vs before |", "|---|---|---|---|---|"]
    for k, (stage, name, t, diff) in enumerate(rows):
        before = rows[k - k % 2][2]
        unit = "mm" if stage == "transform" else ""
        lines.append(f"| {stage} | {name} | {t:.3f} | {before / t:.1f}× | {diff:.1e} {unit} |")
    lines += ["", f"Command: `python benchmarks/bench_fields.py --threads {args.threads} --repeats {args.repeats}`"]
    publish(lines, "fields.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
