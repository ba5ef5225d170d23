"""The warp stage of `progreg register`: the moving image resampled onto the fixed grid
through the registration's displacement field, ITK's resampler against ours, in one run.

The field is what the engine makes for a 512×512×130 image with a 64³ network: smooth
(a cubic-spline field up to ~10 mm), on the fixed grid subsampled 4×4×1, LPS mm.

    python benchmarks/bench_warp.py [--threads 2] [--repeats 3]

Writes benchmarks/results/warp.md.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import SimpleITK as sitk
    import torch

    from ProgressiveRegistrationLib.core import warp
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.core.transforms import displacement_image
    from ProgressiveRegistrationLib.training.synthesis import spline_field

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rng = np.random.default_rng(0)
    size, spacing = (512, 512, 130), (0.7, 0.7, 2.5)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.normal(0, 400, (1, 1, 9, 17, 17)).astype(np.float32)),
                                             size=size[::-1], mode="trilinear", align_corners=True)[0, 0].numpy()
    moving = sitk.GetImageFromArray((smooth + rng.normal(0, 20, smooth.shape)).clip(-1024, 2000).astype(np.int16))
    moving.SetSpacing(spacing)
    moving.SetOrigin((-179.0, -179.0, -160.0))
    fixed = Grid.from_image(moving)
    out = fixed.subsampled((4, 4, 1))
    values = (torch.rand(3, 6, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 10.0
    disp = spline_field(values, max(out.size))[:, : out.size[2], : out.size[1], : out.size[0]]
    disp_image = displacement_image(disp.movedim(0, -1).numpy(), out)

    rows, reference = [], None
    for name, compiled in (("ITK ResampleImageFilter + DisplacementFieldTransform (before)", False),
                           ("ours: warp.warp_moving, one numba kernel (after)", True)):
        warp.warp_moving(moving, fixed, disp_image, compiled=compiled)  # numba: load or compile the kernel
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = warp.warp_moving(moving, fixed, disp_image, compiled=compiled)
            times.append(time.perf_counter() - t0)
        arr = sitk.GetArrayFromImage(result).astype(np.float32)
        reference = arr if reference is None else reference
        rows.append((name, statistics.median(times), float(np.abs(arr - reference).max())))
    base = rows[0][1]
    lines = ["# Warp stage (benchmarks/bench_warp.py)", "",
             f"Moving image 512×512×130 int16 resampled onto the fixed grid through a smooth displacement field on a "
             f"{'×'.join(map(str, out.size))} grid (LPS mm); {args.threads} threads, median of {args.repeats}, both rows "
             f"in one run ({platform.machine()}, SimpleITK {sitk.Version.VersionString()}, "
             f"numba {warp.numba.__version__ if warp.numba else 'absent'}).", "",
             "| variant | seconds | speed-up | max abs difference vs ITK (HU) |", "|---|---|---|---|"]
    lines += [f"| {n} | {t:.2f} | {base / t:.1f}× | {d:.1f} |" for n, t, d in rows]
    lines += ["", f"Command: `python benchmarks/bench_warp.py --threads {args.threads} --repeats {args.repeats}`"]
    publish(lines, "warp.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
