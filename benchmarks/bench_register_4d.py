"""`progreg register-4d` on a 10-phase 4DCT of 512×512×130, against `progreg register` of
one pair of it, in the same run (both new processes, default settings: network + refinement).

The 4DCT: phase 0 (inhale, the reference) and nine simulated phases (breathing.py) whose
diaphragm motion follows one breathing cycle, ``15 mm · (1 − cos(2πk/10)) / 2`` (0 at phase
0, 15 mm at phase 5), with 100 exact landmarks followed through every phase. The pair:
phase 0 and phase 5. Phase 0 is, by ``--case``: ``full-chest`` (default), the clinical-size
two-lung phantom of ``bench_register.py`` (512×512×130 at 0.98×0.98×2 mm, landmarks at its
vessel bifurcations); ``hemithorax``, the real chest CT resampled to 512×512×130 at
0.7×0.7×2.5 mm (one hemithorax in the field of view).

    python benchmarks/bench_register_4d.py [--threads 2] [--phases 10] [--case full-chest|hemithorax]

Writes benchmarks/results/register_4d.md.
"""

from __future__ import annotations

import argparse
import csv
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from bench_register import CLINICAL_GRIDS, CLINICAL_SEED, full_fov_ct  # noqa: E402
from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

AMPLITUDE_MM = 15.0


def reference_phase(case: str) -> tuple[sitk.Image, np.ndarray]:
    """Phase 0 of ``case`` (int16 HU) and 100 landmarks on it (LPS mm)."""
    if case == "hemithorax":
        inhale = full_fov_ct()
        first = simulate(inhale, seed=0, amplitude_si_mm=AMPLITUDE_MM, amplitude_ap_mm=AMPLITUDE_MM / 3,
                         n_landmarks=100)
        return inhale, first.fixed_points_lps
    from ProgressiveRegistrationLib.simulation.phantom import generate

    size, spacing = CLINICAL_GRIDS["0.98"]
    ph = generate(CLINICAL_SEED, size, spacing)
    rng = np.random.default_rng(CLINICAL_SEED)
    points = ph.bifurcations_lps[rng.choice(len(ph.bifurcations_lps), min(100, len(ph.bifurcations_lps)),
                                            replace=False)]
    return sitk.Cast(ph.image, sitk.sitkInt16), points


def make_4dct(out: Path, n: int, case: str) -> tuple[list[Path], Path, dict[int, np.ndarray]]:
    """Phase files, the reference's landmark file, and each phase's exact landmark positions."""
    inhale, points = reference_phase(case)
    paths, truth = [], {0: points}
    for k in range(n):
        amplitude = AMPLITUDE_MM * (1 - np.cos(2 * np.pi * k / n)) / 2
        path = out / f"phase_{k:02d}.nrrd"
        if k == 0:
            sitk.WriteImage(inhale, str(path), True)
        else:
            pair = simulate(inhale, seed=k, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3,
                            fixed_landmarks_lps=points)
            sitk.WriteImage(pair.exhale, str(path), True)
            truth[k] = pair.moving_points_lps
        paths.append(path)
    write_markups_json(out / "points.mrk.json", points)
    return paths, out / "points.mrk.json", truth


def progreg(args: list, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", *map(str, args)],
                   cwd=ROOT / "ProgressiveRegistration", env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phases", type=int, default=10)
    ap.add_argument("--case", choices=("full-chest", "hemithorax"), default="full-chest")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench4d-") as tmp:
        tmp = Path(tmp)
        paths, points, truth = make_4dct(tmp, args.phases, args.case)
        half = args.phases // 2
        pair_s = progreg(["register", paths[0], paths[half], "--out", tmp / "pair", "--no-overview"], args.threads)
        fourd_s = progreg(["register-4d", *paths, "--reference", 0, "--points", points, "--out", tmp / "4d"],
                          args.threads)
        summary = json.loads((tmp / "4d" / "summary.json").read_text())
        with open(tmp / "4d" / "trajectories.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    lines = [
        "# All phases of a 10-phase 4DCT to a reference (benchmarks/bench_register_4d.py)", "",
        f"{args.phases} phases of " + ("a two-lung phantom, 512×512×130 at 0.98×0.98×2 mm (full chest)"
                                      if args.case == "full-chest" else
                                      "a real chest CT resampled to 512×512×130 at 0.7×0.7×2.5 mm (one hemithorax)")
        + ", phase 0 the reference; `progreg register-4d` "
        "against `progreg register` of phase 0 and phase "
        f"{half} (the deepest exhale), each a new process with default settings (network + refinement), same run, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}.", "",
        "| | seconds |", "|---|---|",
        f"| one pair (`progreg register`) | {pair_s:.1f} |",
        f"| {args.phases} phases (`progreg register-4d`, {args.phases - 1} registrations) | {fourd_s:.1f} |",
        f"| **ratio** | **{fourd_s / pair_s:.2f}×** (target ≤ 10×) |", "",
        f"Ten phases in **{fourd_s / 60:.1f} min** (target ≤ 3 min on the full chest).", "",
        "Per phase (landmarks: 100 exact points followed from phase 0):", "",
        "| phase | diaphragm motion (mm) | TRE before (mm) | TRE after (mm) | lung volume change | folding | seconds |",
        "|---|---|---|---|---|---|---|"]
    for row in summary["phases"]:
        k = row["phase"]
        est = np.array([[float(r["l"]), float(r["p"]), float(r["s"])] for r in rows if int(r["phase"]) == k])
        before = np.linalg.norm(truth[k] - truth[0], axis=1).mean()
        after = np.linalg.norm(est - truth[k], axis=1).mean()
        motion = AMPLITUDE_MM * (1 - np.cos(2 * np.pi * k / args.phases)) / 2
        lines.append(f"| {k} | {motion:.1f} | {before:.2f} | {after:.2f} | {row['volume_change_percent']:+.2f} % | "
                     f"{row['folding_percent']:.3f} % | {row['seconds']:.1f} |")
    lines += ["", f"Command: `python benchmarks/bench_register_4d.py --threads {args.threads} --phases {args.phases} "
                  f"--case {args.case}`"]
    publish(lines, "register_4d.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
