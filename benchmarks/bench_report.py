"""What the quality report costs: `progreg register` with and without `--no-report`, in one run.

The case: a full-chest phantom with both lungs at clinical size (512×512×130, 0.98×0.98×2 mm)
and a simulated exhale of it (exact landmark pairs at vessel bifurcations), the bundled model,
the default registration (network + refinement). The two commands alternate, ``--repeats``
times each; the table gives each run's wall time, the report's own stages (``quality``:
the maps and checks; the part of ``write`` that is the report) and the ratio of the medians.

    python benchmarks/bench_report.py [--repeats 2] [--threads 2]

Writes benchmarks/results/report.md.
"""

from __future__ import annotations

import argparse
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

from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402
from ProgressiveRegistrationLib.simulation.phantom import generate  # noqa: E402

SIZE, SPACING = (512, 512, 130), (0.98, 0.98, 2.0)


def make_case(folder: Path) -> None:
    ph = generate(7, SIZE, SPACING)
    pair = simulate(ph.image, seed=7, amplitude_si_mm=15.0, amplitude_ap_mm=5.0, fixed_landmarks_lps=ph.bifurcations_lps)
    sitk.WriteImage(pair.inhale, str(folder / "fixed.nrrd"), True)
    sitk.WriteImage(pair.exhale, str(folder / "moving.nrrd"), True)
    write_markups_json(folder / "fixed.mrk.json", pair.fixed_points_lps)
    write_markups_json(folder / "moving.mrk.json", pair.moving_points_lps)


def run(folder: Path, out: Path, report: bool, threads: int) -> dict:
    args = [sys.executable, "-m", "ProgressiveRegistrationLib", "register", folder / "fixed.nrrd", folder / "moving.nrrd",
            "--out", out, "--fixed-landmarks", folder / "fixed.mrk.json", "--moving-landmarks",
            folder / "moving.mrk.json", "--json", *([] if report else ["--no-report"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run([str(a) for a in args], cwd=ROOT / "ProgressiveRegistration", capture_output=True, text=True,
                       env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    summary = json.loads(r.stdout)
    return {"wall": wall, "seconds": summary["seconds"], "report": report,
            "overall": summary.get("quality", {}).get("overall"), "tre": summary["tre_after_mm"]["mean"],
            "grid": summary["grid"]["transform_size"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_case(folder)
        print(f"case made in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        runs = []
        for k in range(args.repeats):
            for report in ((True, False) if k % 2 == 0 else (False, True)):
                runs.append(run(folder, folder / f"out_{k}_{int(report)}", report, args.threads))
                print(runs[-1], file=sys.stderr)
    with_report = [r for r in runs if r["report"]]
    without = [r for r in runs if not r["report"]]
    med_with = float(np.median([r["wall"] for r in with_report]))
    med_without = float(np.median([r["wall"] for r in without]))
    lines = ["# What the quality report costs (benchmarks/bench_report.py)", "",
             f"Full-chest phantom, both lungs, {'×'.join(map(str, SIZE))} voxels at {'×'.join(map(str, SPACING))} mm, and a "
             f"simulated exhale; bundled model, network + refinement; {args.threads} threads; {platform.machine()}; "
             f"`progreg register` with the report (default) and with `--no-report`, alternating, {args.repeats} each, "
             f"in one run. Transform grid {'×'.join(map(str, runs[0]['grid']))}.", "",
             "| run | report | wall time, s | quality maps and checks, s | writing, s | TRE after, mm | verdict |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lines.append(f"| {i + 1} | {'yes' if r['report'] else 'no'} | {r['wall']:.1f} | "
                     f"{r['seconds'].get('quality', 0.0):.2f} | {r['seconds']['write']:.2f} | {r['tre']:.2f} | "
                     f"{r['overall'] or ''} |")
    lines += ["", f"Median wall time with the report {med_with:.1f} s, without {med_without:.1f} s: the report adds "
                  f"**{100 * (med_with / med_without - 1):.1f} %** (target ≤ 15 %)."]
    publish(lines, "report.md")


if __name__ == "__main__":
    main()
