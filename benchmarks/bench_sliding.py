"""The lungs sliding along the chest wall: the refinement with isotropic diffusion against the
default, whose diffusion across the lung surface is relaxed for the slide
(``RefineConfig.sliding_weight``), on pairs whose motion slides there.

Pairs (exact landmarks): the bundled CT (one hemithorax, real) under the breathing simulator
at 15, 22 and 30 mm of diaphragm motion, and eight thorax phantoms (both lungs, vessel trees;
landmarks at vessel bifurcations) at 12 to 35 mm. The simulator's superior–inferior motion is
confined to the lungs' footprint, so the lungs slide along the chest wall. Per pair and setting:
the refined TRE (mean ± SD, max), folding, the refinement's seconds; the TRE by the landmarks'
depth below the lung surface; and the field across the pleura on one phantom
(``results/sliding_*.png``). Beside them the zero-field ablation of the default: the network's
field replaced by zero (the crops' affine alone, then the refinement), which says how much of
the result the network carries.

    python benchmarks/bench_sliding.py [--threads 2]

Writes benchmarks/results/sliding.md, sliding_by_depth.png and sliding_profile.png.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import RESULTS, publish  # noqa: E402

from ProgressiveRegistrationLib.core import fields  # noqa: E402
from ProgressiveRegistrationLib.core.grid import Grid  # noqa: E402
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks  # noqa: E402
from ProgressiveRegistrationLib.io.images import read_image  # noqa: E402
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import load_model  # noqa: E402
from ProgressiveRegistrationLib.registration import engine  # noqa: E402
from ProgressiveRegistrationLib.registration.engine import register_images  # noqa: E402
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402
from ProgressiveRegistrationLib.simulation.phantom import generate  # noqa: E402

SETTINGS = {"isotropic diffusion": replace(DEFAULT, sliding_weight=1.0), "sliding (default)": DEFAULT}
DEPTH_BINS_MM = ((-np.inf, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, np.inf))
PROFILE_CASE = "phantom 213, 28 mm"


def cases():
    """(name, BreathingPair) of every benchmark pair."""
    ct = read_image(BUNDLED_SAMPLE)
    for seed, amplitude in ((2, 15.0), (3, 22.0), (4, 30.0)):
        # No depth limit on the simulator's picks: most then lie on the lung surface, where the slide is.
        yield (f"bundled CT, {amplitude:.0f} mm",
               simulate(ct, seed=seed, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3, min_depth_mm=0.0))
    for seed in range(210, 218):
        amplitude = 12.0 + (seed % 8) * 3.3
        ph = generate(seed)
        rng = np.random.default_rng(seed)
        points = ph.bifurcations_lps[rng.choice(len(ph.bifurcations_lps), min(100, len(ph.bifurcations_lps)),
                                                replace=False)]
        yield (f"phantom {seed}, {amplitude:.0f} mm",
               simulate(ph.image, seed=seed, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3,
                        fixed_landmarks_lps=points))


def depth_mm(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Each point's distance (mm) inside the pleura (the lungs' outer surface; negative outside)."""
    grid = Grid.from_image(image)
    index = np.clip(np.round(grid.points_to_index(points_lps)).astype(int), 0, np.asarray(grid.size) - 1)
    return thorax_masks(image).pleura_depth_mm(grid)[index[:, 2], index[:, 1], index[:, 0]].astype(float)


def true_displacement(pair, points_lps: np.ndarray) -> np.ndarray:
    """φ(x) − x of the simulated motion at fixed points (LPS mm): ``y`` with ``y + w(y) = x``."""
    grid = Grid.from_image(pair.exhale)
    w = torch.from_numpy(pair.field_lps).movedim(-1, 0).double()
    y = points_lps.copy()
    for _ in range(50):
        at = fields.sample(w, torch.from_numpy(grid.points_to_index(y).T.copy())).T.numpy()
        y = points_lps - at
    return y - points_lps


def profile_figure(pair, results: dict, path: Path) -> None:
    """The superior–inferior displacement along a left–right line through one lung at its base,
    across the lateral pleura: the simulated truth, and each setting's refined field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = Grid.from_image(pair.inhale)
    masks = thorax_masks(pair.inhale)
    lungs = masks.pleura_on(grid)
    k = int(np.flatnonzero(lungs.any(axis=(1, 2))).min() + 0.2 * np.ptp(np.flatnonzero(lungs.any(axis=(1, 2)))))
    j = int(np.median(np.flatnonzero(lungs[k].any(axis=1))))
    i = np.arange(grid.size[0])
    points = grid.points_to_lps(np.stack([i, np.full_like(i, j), np.full_like(i, k)], -1).astype(float))
    inside = lungs[k, j]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.plot(points[:, 0], true_displacement(pair, points)[:, 2], "k-", lw=2.2, label="simulated truth")
    for (name, result), style in zip(results.items(), ("C1--", "C0-")):
        tx = sitk.DisplacementFieldTransform(sitk.Cast(result.displacement, sitk.sitkVectorFloat64))
        moved = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in points]) - points
        ax.plot(points[:, 0], moved[:, 2], style, lw=1.6, label=f"refined, {name}")
    edges = np.flatnonzero(np.diff(inside.astype(int)))
    bounds = [0.5 * (points[e, 0] + points[e + 1, 0]) for e in edges]
    for n, (a, b) in enumerate(zip(bounds[::2], bounds[1::2])):
        ax.axvspan(a, b, color="C0", alpha=0.16, lw=0, label="inside the pleura" if n == 0 else None)
    body = np.flatnonzero(mask_on(masks.body, grid)[k, j])
    if body.size:
        for a, b in ((points[0, 0], points[body[0], 0]), (points[body[-1], 0], points[-1, 0])):
            ax.axvspan(a, b, color="0.5", alpha=0.12, lw=0)
    ax.set_xlabel("L coordinate (mm): right ← → left; grey: outside the body (no image data to align)")
    ax.set_ylabel("superior–inferior\ndisplacement (mm)")
    ax.set_title(f"Across the pleura at the lung base ({PROFILE_CASE}, S = {points[0, 2]:.0f} mm)", fontsize=10)
    ax.legend(fontsize=8, loc="lower center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def depth_figure(errors: dict, path: Path) -> None:
    """Mean and 95th percentile of the refined TRE by depth below the pleura, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    labels = [f"< {b:g}" if a == -np.inf else (f"≥ {a:g}" if b == np.inf else f"{a:g}–{b:g}")
              for a, b in DEPTH_BINS_MM]
    x = np.arange(len(labels))
    for n, (name, (depth, err)) in enumerate(errors.items()):
        means = [err[(depth >= a) & (depth < b)].mean() for a, b in DEPTH_BINS_MM]
        p95 = [np.percentile(err[(depth >= a) & (depth < b)], 95) for a, b in DEPTH_BINS_MM]
        ax.bar(x + (n - 0.5) * 0.38, means, 0.36, label=f"{name}: mean", color=f"C{1 - n}")
        ax.plot(x + (n - 0.5) * 0.38, p95, "v", color=f"C{1 - n}", label=f"{name}: 95th percentile")
    counts = [int(((errors[next(iter(errors))][0] >= a) & (errors[next(iter(errors))][0] < b)).sum())
              for a, b in DEPTH_BINS_MM]
    top = max(np.percentile(err[(depth >= a) & (depth < b)], 95) for depth, err in errors.values()
              for a, b in DEPTH_BINS_MM)
    ax.set_ylim(0, 1.45 * top)  # room for the legend above the markers
    ax.set_xticks(x, [f"{lab} mm\n(n = {c})" for lab, c in zip(labels, counts)])
    ax.set_xlabel("landmark depth below the pleura")
    ax.set_ylabel("refined TRE (mm)")
    ax.set_title("Refined TRE by distance to the lung surface, all benchmark pairs", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(None)
    rows, errors, profile, ablation = [], {name: ([], []) for name in SETTINGS}, None, {}
    for case, pair in cases():
        depth = depth_mm(pair.inhale, pair.fixed_points_lps)
        results = {}
        for name, config in SETTINGS.items():
            r = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps, pair.moving_points_lps,
                                refinement=config, warp_moving=False)
            after = r.landmarks["after_mm"]
            rows.append({"case": case, "setting": name, "before": r.landmarks["before_mm"].mean(),
                         "network": r.landmarks["network_mm"].mean(), "mean": after.mean(), "sd": after.std(),
                         "max": after.max(), "near": after[depth < 5.0].mean(), "folding": r.folding_percent,
                         "refine_s": r.seconds["refine"]})
            errors[name][0].append(depth)
            errors[name][1].append(after)
            results[name] = r
            print(f"{case:22s} {name:20s} {after.mean():.3f} ± {after.std():.3f} max {after.max():.2f}", flush=True)
        if case == PROFILE_CASE:
            profile = (pair, results)
        network = engine.symmetric_forward
        engine.symmetric_forward = lambda net, x, device: torch.zeros((3, *x.shape[2:]))
        try:
            r = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps, pair.moving_points_lps,
                                refinement=DEFAULT, warp_moving=False)
        finally:
            engine.symmetric_forward = network
        ablation[case] = r.landmarks["after_mm"]
    errors = {name: (np.concatenate(d), np.concatenate(e)) for name, (d, e) in errors.items()}
    depth_figure(errors, RESULTS / "sliding_by_depth.png")
    if profile is not None:
        profile_figure(*profile, RESULTS / "sliding_profile.png")

    def cell(case, name, key, fmt):
        r = next(r for r in rows if r["case"] == case and r["setting"] == name)
        return format(r[key], fmt)

    names = list(SETTINGS)
    lines = ["# The lungs sliding along the chest wall (benchmarks/bench_sliding.py)", "",
             f"Refined TRE (mm) of the bundled model, isotropic diffusion against sliding at the pleura "
             f"(`sliding_weight` {DEFAULT.sliding_weight}: the diffusion across the lung surface keeps its normal "
             f"part and {DEFAULT.sliding_weight:g} of the rest); {args.threads} threads, one run "
             f"({platform.machine()}). Landmarks near the pleura: less than 5 mm inside it.", "",
             "| pair | TRE before | network alone | " + " | ".join(
                 f"{n}: mean ± SD | max | near the pleura" for n in names) + " | folding % (iso / sliding) | "
                                                                    "zero-field ablation: mean | max |",
             "|---|---|---|" + "---|---|---|" * len(names) + "---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = [cell(case, names[0], "before", ".2f"), cell(case, names[0], "network", ".2f")]
        for n in names:
            cells += [f"{cell(case, n, 'mean', '.3f')} ± {cell(case, n, 'sd', '.3f')}", cell(case, n, "max", ".2f"),
                      cell(case, n, "near", ".3f")]
        cells.append(f"{cell(case, names[0], 'folding', '.4f')} / {cell(case, names[1], 'folding', '.4f')}")
        cells += [f"{ablation[case].mean():.3f}", f"{ablation[case].max():.2f}"]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    summary = {}
    for n in names:
        sel = [r for r in rows if r["setting"] == n]
        summary[n] = {k: np.mean([r[k] for r in sel]) for k in ("mean", "sd", "max", "near", "refine_s")}
        summary[n]["worst"] = max(r["max"] for r in sel)
        summary[n]["folding"] = max(r["folding"] for r in sel)
    lines += ["", "| setting | mean TRE | mean SD | mean of the pairs' max | worst landmark | near the pleura | "
                  "largest folding % | refinement, s (mean) |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        s = summary[n]
        lines.append(f"| {n} | {s['mean']:.3f} | {s['sd']:.3f} | {s['max']:.2f} | {s['worst']:.2f} | "
                     f"{s['near']:.3f} | {s['folding']:.4f} | {s['refine_s']:.2f} |")
    zero = np.array([a.mean() for a in ablation.values()])
    lines += ["", f"Zero-field ablation (sliding, the network's field replaced by zero): mean TRE {zero.mean():.3f} mm, "
                  f"mean of the pairs' max {np.mean([a.max() for a in ablation.values()]):.2f} mm, worst landmark "
                  f"{max(a.max() for a in ablation.values()):.2f} mm; worse than with the network on "
                  f"{sum(z > r['mean'] + 0.02 for z, r in zip(zero, [r for r in rows if r['setting'] == names[1]]))} "
                  f"of {len(zero)} pairs (by more than 0.02 mm)."]
    lines += ["", f"Refinement time, sliding / isotropic: {summary[names[1]]['refine_s'] / summary[names[0]]['refine_s']:.2f}×.",
              "", "![TRE by depth](sliding_by_depth.png)", "", "![The field across the pleura](sliding_profile.png)",
              "", f"Command: `python benchmarks/bench_sliding.py --threads {args.threads}`"]
    publish(lines, "sliding.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
