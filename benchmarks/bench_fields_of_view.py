"""World-identical copies stored another way, and fields of view that cut the lungs differently:
the refined TRE against the original storage's, at ordinary and large motion, with the network
alone and the zero-field ablation beside.

The pair: the bundled CT (one hemithorax, cut by its own field of view) and a simulated exhale
(breathing.py) at two amplitudes (15 and 45 mm of diaphragm motion), 60 exact landmark pairs.
Each copy has every voxel at the same world position as the original: rotated 10° or 30° (a
B-spline resample onto an oblique grid, the outside filled with -1024 or the scanner's -2048),
or cut to 80 % of its width. The TRE of each copy is compared with the original's on the same
landmarks (those inside both images). The zero-field ablation replaces the network's field by
zero (the crops' affine alone, then the refinement) on the original storage.

    python benchmarks/bench_fields_of_view.py [--threads 2]

Writes benchmarks/results/fields_of_view.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))
sys.path.insert(0, str(ROOT / "Testing"))

from conftest import narrowed, padded  # noqa: E402
from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.images import read_image  # noqa: E402
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import load_model  # noqa: E402
from ProgressiveRegistrationLib.registration import engine  # noqa: E402
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

COPIES = {
    "moving rotated 10°, padded -1024": ("moving", lambda im: padded(im, 10.0, 0, -1024.0)),
    "moving rotated 10°, padded -2048": ("moving", lambda im: padded(im, 10.0, 0, -2048.0)),
    "moving rotated 30°, padded -1024": ("moving", lambda im: padded(im, 30.0, 2, -1024.0)),
    "fixed rotated 30°, padded -1024": ("fixed", lambda im: padded(im, 30.0, 2, -1024.0)),
    "fixed rotated 30°, padded -2048": ("fixed", lambda im: padded(im, 30.0, 2, -2048.0)),
    "moving cut to 80 % of its width": ("moving", narrowed),
    "fixed cut to 80 % of its width": ("fixed", narrowed),
}


def register(fixed, moving, pair, model):
    t0 = time.perf_counter()
    r = engine.register_images(fixed, moving, model, fixed_points_lps=pair.fixed_points_lps,
                               moving_points_lps=pair.moving_points_lps, refinement=DEFAULT, warp_moving=False)
    return r.landmarks, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(None, "cpu")
    image = read_image(BUNDLED_SAMPLE)
    lines = ["# Fields of view and storage (benchmarks/bench_fields_of_view.py)", "",
             f"The bundled CT (one hemithorax) and a simulated exhale, 60 exact landmark pairs; bundled model, default "
             f"refinement; {args.threads} threads; one run ({platform.machine()}). Mean TRE in mm (max in brackets) on "
             "the landmarks inside both images of each row, the original storage's on the same landmarks beside.", ""]
    for amplitude in (15.0, 45.0):
        pair = simulate(image, seed=1, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3)
        original, _ = register(pair.inhale, pair.exhale, pair, model)
        forward = engine.symmetric_forward
        engine.symmetric_forward = lambda net, x, device: torch.zeros((3, *x.shape[2:]))
        try:
            zero, _ = register(pair.inhale, pair.exhale, pair, model)
        finally:
            engine.symmetric_forward = forward
        lines += [f"## Diaphragm motion {amplitude:g} mm (mean landmark motion "
                  f"{original['before_mm'].mean():.2f} mm, max {original['before_mm'].max():.1f})", "",
                  f"Original storage: network alone {original['network_mm'].mean():.2f}, refined "
                  f"{original['after_mm'].mean():.2f} (max {original['after_mm'].max():.2f}); zero-field ablation "
                  f"refined {zero['after_mm'].mean():.2f} (max {zero['after_mm'].max():.2f}).", "",
                  "| copy | landmarks | network alone | refined | original storage, refined | difference | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for name, (which, restore) in COPIES.items():
            fixed, moving = (restore(pair.inhale), pair.exhale) if which == "fixed" else (pair.inhale, restore(pair.exhale))
            lm, seconds = register(fixed, moving, pair, model)
            used = lm["used"]
            ours, reference = lm["after_mm"][used], original["after_mm"][used]
            lines.append(f"| {name} | {int(used.sum())} | {lm['network_mm'][used].mean():.2f} | {ours.mean():.2f} "
                         f"({ours.max():.2f}) | {reference.mean():.2f} ({reference.max():.2f}) | "
                         f"{ours.mean() - reference.mean():+.2f} | {seconds:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
        lines.append("")
    lines += ["Command: `python benchmarks/bench_fields_of_view.py --threads 2`"]
    publish(lines, "fields_of_view.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
