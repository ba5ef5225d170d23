"""Large motion: what the network alone, the network with the refinement, and the refinement
without the network (the zero-field ablation) each achieve, beside the strongest open peers
(elastix, deeds, ConvexAdam), on the same pairs in one run.

Pairs: the bundled CT (one hemithorax, real, resampled to 1.37×1.37×2.5 mm) and a real full
chest (512×512×141 at 0.98×0.98×2 mm: the chest CT next to the project padded into a full field
of view, ``bench_register.full_fov_ct``) under the breathing simulator at three diaphragm
amplitudes: ordinary (25 mm), deep (45 mm) and COPD-scale (70 mm; inspiration/expiration pairs
of COPD studies move 11–30 mm on average, DIR-Lab COPDgene). The table gives each pair's own
displacement statistics. Exact landmarks in two sets: 300 of the simulator's vessel picks at
least 5 mm inside the pleura (as DIR-Lab's landmarks lie inside the lungs), and 150 picks
without a depth limit, most of them on the lung surface, where the simulated slide is a smooth
shear over a few mm (its footprint is blurred by a 6-mm Gaussian) rather than the real
discontinuity; both sets' statistics are given.

Per pair and method: TRE mean ± SD, max, folding (det J ≤ 0) inside the fixed lungs, and the
registration's seconds as a ratio to ours (network + refinement) in the same run.

- ours: ``register_images`` with the bundled model; "network alone" is the same run's
  network field (before the refinement).
- zero field: the same command with a copy of the model whose output convolutions are zeroed
  (the refinement then starts from the lung crops' alignment alone).
- elastix: affine-free B-spline, the register benchmark's parameter set (``bench_register``).
- deeds (mattiaspaul/deedsBCV; build with ``make`` and pass ``--deeds DIR``): ``linearBCV``
  then ``deedsBCV`` with their default parameters, as its README runs them.
- ConvexAdam (PyPI ``convexAdam`` 0.2.0, ``convex_adam_pt``, default parameters, ``ic=True``:
  ``ic=False`` is broken in 0.2.0).

deeds and ConvexAdam ignore voxel spacing and need both images on one grid: both images are
resampled (linearly) onto one isotropic grid of ``--peer-spacing`` mm over the fixed image
(1.5 mm, their usual lung setting). deeds writes its field per control point in its own axis
order; rather than decode it, its own ``applyBCVfloat`` warps three coordinate images (the
fixed grid's i, j and k), which gives the dense mapping in our index order through deeds' own
interpolation. Each peer's converted field is checked against the peer's own warped image
(SimpleITK's resampler through the converted field; the table's last column: mean |ΔHU| in
the lungs).

    python benchmarks/bench_large_motion.py [--threads 2] [--deeds DIR] [--cases small,full]
        [--amplitudes 25,45,70] [--skip-elastix] [--skip-convexadam]

Writes benchmarks/results/large_motion.md and large_motion.png (and the rows as large_motion.json).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))
sys.path.insert(0, str(HERE))

from bench_register import full_fov_ct, run_elastix_points  # noqa: E402
from bench_whole_command import small_real_ct  # noqa: E402
from results_table import RESULTS, publish  # noqa: E402

from ProgressiveRegistrationLib.core import fields  # noqa: E402
from ProgressiveRegistrationLib.core.grid import Grid  # noqa: E402
from ProgressiveRegistrationLib.core.lungs import thorax_masks  # noqa: E402
from ProgressiveRegistrationLib.core.metrics import tre_mm  # noqa: E402
from ProgressiveRegistrationLib.core.transforms import map_points  # noqa: E402
from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import Model, load_model  # noqa: E402
from ProgressiveRegistrationLib.registration.engine import register_images  # noqa: E402
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

CASES = {"small": "bundled CT (one hemithorax), 114×156×128 at 1.37×1.37×2.5 mm",
         "full": "real full chest, 512×512×141 at 0.98×0.98×2 mm"}
AMPLITUDES = {25.0: "ordinary", 45.0: "deep", 70.0: "COPD-scale"}
N_LANDMARKS = 300
N_SURFACE = 150
OURS_STAGES = ("crop", "network", "refine", "transform")
METHODS = ("network alone", "network + refinement", "zero field + refinement", "elastix", "deeds", "ConvexAdam")


def cases(names, amplitudes):
    """(case, amplitude, pair, interior): the pair's landmarks are the simulator's vessel
    picks inside the lungs (``interior``) followed by picks without a depth limit (most on
    the lung surface, where the simulated slide blends the lungs' motion into the chest
    wall's over a few mm)."""
    images = {"small": small_real_ct, "full": lambda: full_fov_ct((512, 512, 141), (0.98, 0.98, 2.0))}
    for name in names:
        fixed = images[name]()
        for amplitude in amplitudes:
            motion = {"seed": 1, "amplitude_si_mm": amplitude, "amplitude_ap_mm": amplitude / 3}
            pair = simulate(fixed, n_landmarks=N_LANDMARKS, **motion)
            surface = simulate(fixed, n_landmarks=N_SURFACE, min_depth_mm=0.0, **motion)
            interior = np.r_[np.ones(len(pair.fixed_points_lps), bool), np.zeros(len(surface.fixed_points_lps), bool)]
            pair = dataclasses.replace(pair, fixed_points_lps=np.r_[pair.fixed_points_lps, surface.fixed_points_lps],
                                       moving_points_lps=np.r_[pair.moving_points_lps, surface.moving_points_lps])
            yield name, amplitude, pair, interior


def zero_field(model: Model) -> Model:
    """A copy of ``model`` whose output convolutions (three channels) are zero: its field is
    zero for every input, so a registration with it is the refinement from the crops alone."""
    net = copy.deepcopy(model.net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d) and m.out_channels == 3:
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
    return dataclasses.replace(model, net=net)


def stats(tre: np.ndarray, interior: np.ndarray, folding: float | None, seconds: float | None,
          check: float | None = None) -> dict:
    inner, outer = tre[interior], tre[~interior]
    return {"mean": float(inner.mean()), "sd": float(inner.std()), "max": float(inner.max()),
            "surface_mean": float(outer.mean()), "surface_max": float(outer.max()), "folding": folding,
            "seconds": seconds, "check": check}


def folding_in_lungs(disp_lps: np.ndarray, grid: Grid, lungs: np.ndarray) -> float:
    """Share (%) of the lungs' voxels where det(I + ∇u) ≤ 0; ``disp_lps`` ``[k, j, i, 3]`` on ``grid``."""
    jac = fields.jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp_lps, np.float32)).movedim(-1, 0),
                                      grid.index_to_lps[:3, :3])
    return fields.folding_percent(jac, torch.from_numpy(lungs))


def ours(pair, interior, model: Model, lungs_of) -> tuple[dict, dict]:
    """(network alone, network + refinement) of one registration."""
    r = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps, pair.moving_points_lps,
                        refinement=DEFAULT, warp_moving=False)
    folding = fields.folding_percent(torch.from_numpy(r.jacobian), torch.from_numpy(lungs_of(r.out_grid)))
    seconds = sum(r.seconds[s] for s in OURS_STAGES)
    return (stats(r.landmarks["network_mm"], interior, None, None),
            stats(r.landmarks["after_mm"], interior, folding, seconds))


def peer_grid(fixed: sitk.Image, spacing_mm: float) -> Grid:
    """An isotropic grid of ``spacing_mm`` over the fixed image's extent (its orientation)."""
    grid = Grid.from_image(fixed)
    extent = (np.asarray(grid.size) - 1) * np.asarray(grid.spacing_mm)
    size = tuple(int(np.floor(e / spacing_mm)) + 1 for e in extent)
    return Grid(size, (spacing_mm,) * 3, grid.origin_lps, grid.direction)


def on_grid(image: sitk.Image, grid: Grid) -> sitk.Image:
    return sitk.Resample(image, grid.reference_image(sitk.sitkFloat32), sitk.Transform(), sitk.sitkLinear, -1024.0,
                         sitk.sitkFloat32)


def displacement_from_index(moving_index_kji: np.ndarray, grid: Grid) -> np.ndarray:
    """``[k, j, i, 3]`` LPS displacement (mm) on ``grid`` from each voxel's partner in the
    moving image as a continuous index ``[k, j, i, (k, j, i)]`` of the same grid."""
    kji = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in grid.size[::-1]), indexing="ij"), -1)
    step = grid.index_to_lps[:3, :3]  # LPS mm per (i, j, k)
    return np.einsum("ab,kjib->kjia", step, (moving_index_kji - kji)[..., ::-1]).astype(np.float32)


def resampled_through(moving: sitk.Image, disp_lps: np.ndarray, grid: Grid) -> np.ndarray:
    """``moving`` resampled through the field (SimpleITK, linear) on ``grid``: ``[k, j, i]``."""
    d = sitk.GetImageFromArray(disp_lps.astype(np.float64), isVector=True)
    d.SetOrigin(grid.origin_lps)
    d.SetSpacing(grid.spacing_mm)
    d.SetDirection(grid.direction)
    tx = sitk.DisplacementFieldTransform(d)
    return sitk.GetArrayFromImage(sitk.Resample(moving, grid.reference_image(), tx, sitk.sitkLinear, -1024.0))


def run_deeds(deeds: Path, fixed: sitk.Image, moving: sitk.Image, grid: Grid, work: Path, threads: int):
    """deeds' dense mapping on ``grid`` (continuous moving index ``[k, j, i, (k, j, i)]``), its
    seconds (linearBCV + deedsBCV) and its own warped image ``[k, j, i]``."""
    work.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkInt16), str(work / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkInt16), str(work / "moving.nii.gz"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def call(*args):
        subprocess.run([str(a) for a in args], cwd=work, env=env, check=True, capture_output=True)

    t0 = time.perf_counter()
    call(deeds / "linearBCV", "-F", "fixed.nii.gz", "-M", "moving.nii.gz", "-O", "affine")
    call(deeds / "deedsBCV", "-F", "fixed.nii.gz", "-M", "moving.nii.gz", "-O", "deeds", "-A", "affine_matrix.txt")
    seconds = time.perf_counter() - t0
    kji = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in grid.size[::-1]), indexing="ij")
    partner = []
    for axis, ramp in zip("kji", kji):
        image = sitk.GetImageFromArray(ramp)
        image.CopyInformation(fixed)
        sitk.WriteImage(image, str(work / f"ramp_{axis}.nii.gz"))
        call(deeds / "applyBCVfloat", "-M", f"ramp_{axis}.nii.gz", "-O", "deeds", "-D", f"moved_{axis}.nii.gz",
             "-A", "affine_matrix.txt")
        partner.append(sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"moved_{axis}.nii.gz"))))
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "deeds_deformed.nii.gz"))).astype(np.float32)
    return np.stack(partner, -1).astype(np.float64), seconds, warped


def run_convexadam(fixed: sitk.Image, moving: sitk.Image, work: Path, threads: int):
    """ConvexAdam's dense mapping, seconds and own warped image, in a process of its own."""
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "fixed.npy", sitk.GetArrayFromImage(fixed))
    np.save(work / "moving.npy", sitk.GetArrayFromImage(moving))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, __file__, "--convexadam-worker", str(work), "--threads", str(threads)],
                   env=env, check=True)
    seconds = json.loads((work / "seconds.json").read_text())
    kji = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in fixed.GetSize()[::-1]), indexing="ij"), -1)
    return kji + np.load(work / "disp.npy"), seconds, np.load(work / "warped.npy")


def convexadam_worker(work: Path, threads: int) -> None:
    from convexAdam.apply_convex import apply_convex
    from convexAdam.convex_adam_MIND import convex_adam_pt

    torch.set_num_threads(threads)
    fixed, moving = np.load(work / "fixed.npy"), np.load(work / "moving.npy")
    t0 = time.perf_counter()
    disp = convex_adam_pt(fixed, moving, device=torch.device("cpu"))  # [k, j, i, 3] in (k, j, i) voxels
    (work / "seconds.json").write_text(json.dumps(time.perf_counter() - t0))
    np.save(work / "disp.npy", disp)
    np.save(work / "warped.npy", apply_convex(disp, moving).astype(np.float32))


def peer_result(partner_kji, seconds, warped, moving_iso, grid, pair, interior, lungs) -> dict:
    disp = displacement_from_index(partner_kji, grid)
    predicted = map_points(disp, grid, pair.fixed_points_lps)
    check = float(np.abs(resampled_through(moving_iso, disp, grid) - warped)[lungs].mean())
    return stats(tre_mm(predicted, pair.moving_points_lps), interior, folding_in_lungs(disp, grid, lungs), seconds,
                 check)


def run_pair(name, amplitude, pair, interior, model, zero, args, work: Path, warm_up: bool = False) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    masks = thorax_masks(pair.inhale)
    if warm_up:  # the compiled kernels loaded (or compiled) once, not in the first timing
        ours(pair, interior, model, masks.pleura_on)
    before = tre_mm(pair.fixed_points_lps, pair.moving_points_lps)[interior]
    row = {"case": name, "amplitude": amplitude, "before_mean": float(before.mean()), "before_max": float(before.max())}
    row["network alone"], row["network + refinement"] = ours(pair, interior, model, masks.pleura_on)
    row["zero field + refinement"] = ours(pair, interior, zero, masks.pleura_on)[1]
    print(f"{name} {amplitude:.0f} mm: before {before.mean():.2f}, network {row['network alone']['mean']:.2f}, "
          f"refined {row['network + refinement']['mean']:.3f}, zero field {row['zero field + refinement']['mean']:.3f}",
          flush=True)
    if not args.skip_elastix:
        paths = (work / "fixed.nrrd", work / "moving.nrrd", work / "fixed.mrk.json", work / "moving.mrk.json")
        sitk.WriteImage(pair.inhale, str(paths[0]))
        sitk.WriteImage(pair.exhale, str(paths[1]))
        write_markups_json(paths[2], pair.fixed_points_lps)
        write_markups_json(paths[3], pair.moving_points_lps)
        seconds, predicted = run_elastix_points(paths, args.threads)
        row["elastix"] = stats(tre_mm(predicted, pair.moving_points_lps), interior, None, seconds)
        print(f"  elastix {row['elastix']['mean']:.3f} in {seconds:.0f} s", flush=True)
    grid = peer_grid(pair.inhale, args.peer_spacing)
    fixed_iso, moving_iso = on_grid(pair.inhale, grid), on_grid(pair.exhale, grid)
    lungs = masks.pleura_on(grid)
    if args.deeds is not None:
        row["deeds"] = peer_result(*run_deeds(args.deeds, fixed_iso, moving_iso, grid, work / "deeds", args.threads),
                                   moving_iso, grid, pair, interior, lungs)
        print(f"  deeds {row['deeds']['mean']:.3f} in {row['deeds']['seconds']:.0f} s", flush=True)
    if not args.skip_convexadam:
        row["ConvexAdam"] = peer_result(*run_convexadam(fixed_iso, moving_iso, work / "convexadam", args.threads),
                                        moving_iso, grid, pair, interior, lungs)
        print(f"  ConvexAdam {row['ConvexAdam']['mean']:.3f} in {row['ConvexAdam']['seconds']:.0f} s", flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| pair | TRE before: mean, max | method | inside the lungs: TRE mean ± SD | max | "
             "no depth limit: mean | max | folding % (lungs) | time / ours | conversion check, mean abs HU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours_s = row["network + refinement"]["seconds"]
        first = True
        for method in METHODS:
            if method not in row:
                continue
            r = row[method]
            pair = (f"{CASES[row['case']].split(',')[0]}, {AMPLITUDES.get(row['amplitude'], '')} "
                    f"({row['amplitude']:.0f} mm)" if first else "")
            before = f"{row['before_mean']:.2f}, {row['before_max']:.1f}" if first else ""
            folding = "" if r["folding"] is None else f"{r['folding']:.4f}"
            ratio = "" if r["seconds"] is None else (
                f"1 ({r['seconds']:.1f} s)" if method == "network + refinement" else f"{r['seconds'] / ours_s:.1f}×")
            check = "" if r["check"] is None else f"{r['check']:.1f}"
            lines.append(f"| {pair} | {before} | {method} | {r['mean']:.2f} ± {r['sd']:.2f} | {r['max']:.2f} | "
                         f"{r['surface_mean']:.2f} | {r['surface_max']:.2f} | {folding} | {ratio} | {check} |")
            first = False
    return lines


def summary_table(rows: list[dict]) -> list[str]:
    """Per method over all pairs: mean of the pairs' mean and max TRE (inside the lungs), the
    worst landmark, the same at COPD scale, and the time ratio's median."""
    lines = ["| method | mean TRE | mean of the pairs' max | worst landmark | COPD-scale: mean TRE | worst | "
             "no depth limit: mean TRE | time / ours (median) |", "|---|---|---|---|---|---|---|---|"]
    copd = max(AMPLITUDES)
    for method in METHODS:
        have = [r for r in rows if method in r]
        if not have:
            continue
        at = [r[method] for r in have]
        big = [r[method] for r in have if r["amplitude"] >= copd]
        ratios = [r[method]["seconds"] / r["network + refinement"]["seconds"] for r in have
                  if r[method]["seconds"] is not None]
        lines.append(f"| {method} | {np.mean([a['mean'] for a in at]):.3f} | {np.mean([a['max'] for a in at]):.2f} | "
                     f"{max(a['max'] for a in at):.2f} | "
                     + (f"{np.mean([a['mean'] for a in big]):.3f} | {max(a['max'] for a in big):.2f} | " if big else " | | ")
                     + f"{np.mean([a['surface_mean'] for a in at]):.2f} | "
                     + (f"{np.median(ratios):.1f}× |" if ratios else " |"))
    return lines


def figure(rows: list[dict], path: Path) -> None:
    """Per case, per method: the mean TRE inside the lungs (marker) and the worst landmark (the
    bar's top) at each amplitude, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in CASES if any(r["case"] == c for r in rows)]
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), dpi=110, squeeze=False)
    methods = [m for m in METHODS if any(m in r for r in rows)]
    for ax, name in zip(axes[0], names):
        have = [r for r in rows if r["case"] == name]
        for n, method in enumerate(methods):
            x = np.arange(len(have)) + (n - (len(methods) - 1) / 2) * 0.12
            means = [r[method]["mean"] if method in r else np.nan for r in have]
            tops = [r[method]["max"] if method in r else np.nan for r in have]
            ax.vlines(x, means, tops, color=f"C{n}", lw=1.2, alpha=0.7)
            ax.plot(x, means, "o", color=f"C{n}", ms=5, label=method)
            ax.plot(x, tops, "_", color=f"C{n}", ms=8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xticks(np.arange(len(have)), [f"{AMPLITUDES.get(r['amplitude'], '')}\n{r['amplitude']:.0f} mm "
                                              f"(mean {r['before_mean']:.0f})" for r in have], fontsize=8)
        ax.set_ylabel("TRE inside the lungs (mm)\nmarker: mean; bar: to the worst")
        ax.set_title(CASES[name].split(",")[0] + "\n" + CASES[name].split(", ", 1)[1], fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(methods) // 2 + len(methods) % 2)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_results(rows: list[dict], args) -> None:
    """``large_motion.md`` and ``large_motion.png`` from the rows (also ``--tables-only``)."""
    lines = ["# Large motion (benchmarks/bench_large_motion.py)", "",
             f"Each pair: the breathing simulator's exact landmarks, {N_LANDMARKS} inside the lungs and "
             f"{N_SURFACE} without a depth limit (diaphragm amplitude in brackets; the TRE before is the pair's own "
             "motion inside the lungs). Ours: the bundled model; zero field: its output layer zeroed (the refinement "
             "from the crops alone). deeds (linearBCV + deedsBCV) and ConvexAdam on both images resampled to "
             f"{args.peer_spacing:g} mm isotropic. Time: the registration alone, as a ratio to ours (network + "
             f"refinement) in the same run; {args.threads} threads, {platform.machine()}. Folding: det J ≤ 0 inside "
             "the fixed lungs (elastix's field is not sampled densely here).", "",
             "Inside the lungs: the simulator's vessel picks, at least 5 mm inside the pleura (as DIR-Lab's "
             "landmarks lie inside the lungs). No depth limit: the highest-gradient lung voxels anywhere, most of "
             "them on the lung surface, where the simulated motion blends the lungs' slide into the chest wall's "
             "rest over a few mm (a Gaussian of 6 mm): there a registration that lets the lungs slide fully, as "
             "real lungs do, is off by part of the slide.", "",
             *summary_table(rows), "", "![TRE by amplitude](large_motion.png)", "", *table(rows), "",
             f"Command: `python benchmarks/bench_large_motion.py --threads {args.threads}"
             f"{' --deeds DIR' if args.deeds else ''}` (the rows: `large_motion.json`; `--tables-only` "
             "redraws this page and the figure from them)"]
    figure(rows, RESULTS / "large_motion.png")
    publish(lines, "large_motion.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deeds", type=Path, default=None, help="folder with deedsBCV, linearBCV and applyBCVfloat")
    ap.add_argument("--cases", default="small,full")
    ap.add_argument("--amplitudes", default=",".join(f"{a:g}" for a in AMPLITUDES))
    ap.add_argument("--peer-spacing", type=float, default=1.5)
    ap.add_argument("--skip-elastix", action="store_true")
    ap.add_argument("--skip-convexadam", action="store_true")
    ap.add_argument("--tables-only", action="store_true", help="redraw the page and figure from large_motion.json")
    ap.add_argument("--convexadam-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convexadam_worker is not None:
        convexadam_worker(args.convexadam_worker, args.threads)
        return 0
    if args.tables_only:
        write_results(json.loads((RESULTS / "large_motion.json").read_text()), args)
        return 0
    torch.set_num_threads(args.threads)
    model = load_model(None)
    zero = zero_field(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="large_motion_") as tmp:
        for n, (name, amplitude, pair, interior) in enumerate(cases(args.cases.split(","),
                                                                    [float(a) for a in args.amplitudes.split(",")])):
            rows.append(run_pair(name, amplitude, pair, interior, model, zero, args, Path(tmp) / str(n),
                                 warm_up=n == 0))
            (RESULTS / "large_motion.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_results(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
