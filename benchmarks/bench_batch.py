"""Cases per minute: a shell loop of `progreg register` against `progreg batch`, in one run.

Eight cases of the demo's size (the bundled CT and simulated exhales of it, seeds 0–7, 60
landmark pairs each), default settings (network + refinement, report). Three ways, one after
the other: eight sequential `progreg register` processes (each pays the Python and torch
start-up and the model load); `progreg batch` with one worker of two threads; and with two
workers of one thread each.

    python benchmarks/bench_batch.py [--cases 8]

Writes benchmarks/results/batch.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402


def progreg(*args, threads: int = 2) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", *map(str, args)],
                       cwd=ROOT / "ProgressiveRegistration", capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    args = p.parse_args()
    inhale = sitk.ReadImage(str(BUNDLED_SAMPLE))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows = ["id,fixed,moving,fixed_landmarks,moving_landmarks"]
        for k in range(args.cases):
            pair = simulate(inhale, seed=k)
            sitk.WriteImage(pair.inhale, str(d / f"f{k}.nrrd"))
            sitk.WriteImage(pair.exhale, str(d / f"m{k}.nrrd"))
            write_markups_json(d / f"f{k}.mrk.json", pair.fixed_points_lps)
            write_markups_json(d / f"m{k}.mrk.json", pair.moving_points_lps)
            rows.append(f"c{k},f{k}.nrrd,m{k}.nrrd,f{k}.mrk.json,m{k}.mrk.json")
        (d / "manifest.csv").write_text("\n".join(rows) + "\n")
        progreg("register", d / "f0.nrrd", d / "m0.nrrd", "--out", d / "warm")  # compiled kernels cached first
        t_loop = 0.0
        for k in range(args.cases):
            t_loop += progreg("register", d / f"f{k}.nrrd", d / f"m{k}.nrrd", "--out", d / "loop" / f"c{k}",
                              "--fixed-landmarks", d / f"f{k}.mrk.json", "--moving-landmarks", d / f"m{k}.mrk.json")
        t_one = progreg("batch", d / "manifest.csv", "--out", d / "one", "--workers", 1, "--quiet")
        t_two = progreg("batch", d / "manifest.csv", "--out", d / "two", "--workers", 2, "--quiet")
        with open(d / "two" / "cohort.csv", newline="") as fh:
            done = sum(r["status"] == "done" for r in csv.DictReader(fh))
    n = args.cases
    lines = ["# Cohorts: cases per minute (benchmarks/bench_batch.py)", "",
             f"{n} cases of the demo's size (57×78×64 voxels, 60 landmark pairs each), default settings (network + "
             f"refinement, quality report), {os.cpu_count()} cores, {platform.machine()}, one run. Wall time of the whole "
             "command(s), process start-up and model loading included.", "",
             "| how | wall time, s | cases per minute | vs. the shell loop |", "|---|---|---|---|"]
    for name, t in ((f"{n} × `progreg register` (2 threads each)", t_loop),
                    ("`progreg batch --workers 1` (1 worker × 2 threads)", t_one),
                    ("`progreg batch --workers 2` (2 workers × 1 thread)", t_two)):
        lines.append(f"| {name} | {t:.1f} | {60 * n / t:.1f} | {t_loop / t:.2f}× |")
    lines += ["", f"{done} of {n} cases done in the last run."]
    publish(lines, "batch.md")


if __name__ == "__main__":
    main()
