"""The whole `progreg register` command on real anatomy, as a user meets it: process wall time,
stage by stage, each output's writing time, against elastix in the same run, and optionally
against an earlier checkout of the project (before / after, same run, same machine).

Cases (real CT, simulated exhale with exact landmarks: breathing.py, 15 mm diaphragm motion,
lungs 5 % denser on exhale):

- *small real pair*: the bundled CT (a real thorax, one lung) resampled to 1.37×1.37×2.5 mm,
  114×156×128 voxels (2.3 M): a cropped or low-dose pair;
- *real full chest*: the real chest CT next to the project (TotalSegmentator's chest crop;
  else the bundled CT) in a 512×512×141 grid of 0.98×0.98×2 mm, padded with soft tissue inside
  an elliptical body outline.

Per case: the default command (every default output) and the lean one (``--no-report
--no-warped --no-overview``), each ``--repeat`` times in a new process (the median is
reported), after one untimed run that fills the compiled kernels' cache; the first run after
installation (an empty numba cache: the kernels compiled); elastix B-spline
(``bench_register.ELASTIX_BSPLINE``) once, in its own process. With ``--baseline DIR`` (a
checkout of another commit, e.g. ``git worktree add DIR <commit>``) the same commands of that
checkout, run in turn with ours (ours, before, ours, …).

Then, per output file of the default run: its size and writing time with and without gzip
(the trade behind the compression rule, ``core/itk_fields.gzip_pays``), and the start-up: ``progreg --help``
and the imports a registration needs.

    python benchmarks/bench_whole_command.py [--threads 2] [--repeat 3] [--baseline DIR] [--skip-elastix]
        [--case small|full]

Writes benchmarks/results/whole_command.md.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))
sys.path.insert(0, str(HERE))

from bench_register import SAMPLE, SHARED_CT, denser, full_fov_ct, run_elastix  # noqa: E402
from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

CASES = {"small": "small real pair: bundled CT at 1.37×1.37×2.5 mm, 114×156×128",
         "full": "real full chest: 512×512×141 at 0.98×0.98×2 mm"}
LEAN = ["--no-report", "--no-warped", "--no-overview"]


def small_real_ct() -> sitk.Image:
    """The bundled CT resampled (B-spline) to 1.37×1.37×2.5 mm over its own extent, int16."""
    ct = sitk.ReadImage(str(SAMPLE), sitk.sitkFloat32)
    size, spacing = (114, 156, 128), (1.37, 1.37, 2.5)
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()]))
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetDirection(ct.GetDirection())
    ref.SetOrigin((centre - direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))).tolist())
    return sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkBSpline, -1024.0, sitk.sitkInt16)


def write_case(case: str, out: Path) -> tuple[Path, Path, Path, Path]:
    fixed = small_real_ct() if case == "small" else full_fov_ct((512, 512, 141), (0.98, 0.98, 2.0))
    pair = simulate(fixed, seed=0, amplitude_si_mm=15.0, amplitude_ap_mm=5.0, n_landmarks=100)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "fixed.nrrd", out / "moving.nrrd", out / "fixed.mrk.json", out / "moving.mrk.json")
    sitk.WriteImage(sitk.Cast(pair.inhale, sitk.sitkInt16), str(paths[0]), True)
    sitk.WriteImage(sitk.Cast(denser(pair.exhale), sitk.sitkInt16), str(paths[1]), True)
    write_markups_json(paths[2], pair.fixed_points_lps)
    write_markups_json(paths[3], pair.moving_points_lps)
    return paths


def progreg(checkout: Path, paths, out: Path, threads: int, extra: list[str], env: dict | None = None) -> dict:
    """``progreg register`` of ``checkout`` in a new process: its wall time (s, from the parent)
    and its summary."""
    cmd = [sys.executable, "-m", "ProgressiveRegistrationLib", "register", str(paths[0]), str(paths[1]),
           "--out", str(out), "--fixed-landmarks", str(paths[2]), "--moving-landmarks", str(paths[3]),
           *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads), **(env or {})}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=checkout / "ProgressiveRegistration", capture_output=True, text=True,
                       env=environment)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {checkout}:\n{r.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "summary": summary}


def median_runs(checkouts, paths, out: Path, threads, extra, repeat) -> dict:
    """Per checkout ``(name, path)`` its median run of ``repeat``, the checkouts' runs taken in
    turn (ours, before, ours, before, …) so that a machine speeding up or slowing down over
    the run weighs on both alike."""
    runs: dict = {who: [] for who, _ in checkouts}
    for _ in range(repeat):
        for who, checkout in checkouts:
            runs[who].append(progreg(checkout, paths, out / who, threads, extra))
    medians = {}
    for who, taken in runs.items():
        walls = [r["wall"] for r in taken]
        medians[who] = {**taken[int(np.argsort(walls)[len(walls) // 2])], "walls": walls}
    return medians


def writing_rows(out: Path) -> list[dict]:
    """Per image output of a default run: size and writing time (best of 3) with and without gzip."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in ("transform.nrrd", "jacobian.nrrd", "warped_moving.nrrd", "quality.nrrd",
                     "inverse_consistency.nrrd"):
            if not (out / name).exists():
                continue
            image = sitk.ReadImage(str(out / name))
            row = {"name": name, "type": image.GetPixelIDTypeAsString(), "written": "gzip" if _gzipped(out / name)
                   else "raw"}
            for compress in (False, True):
                best = np.inf
                target = Path(d) / name
                for _ in range(3):
                    t0 = time.perf_counter()
                    sitk.WriteImage(image, str(target), compress)
                    best = min(best, time.perf_counter() - t0)
                row[compress] = (best, target.stat().st_size)
            rows.append(row)
    return rows


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"encoding: gzip" in head or b"encoding: gz" in head


def start_up(threads: int) -> dict:
    """Seconds (best of 3, new processes) of `progreg --help` and of importing what a registration imports."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cwd = ROOT / "ProgressiveRegistration"
    out = {}
    for name, cmd in (("progreg --help", [sys.executable, "-m", "ProgressiveRegistrationLib", "--help"]),
                      ("imports of a registration (pipeline, torch, SimpleITK, numba)",
                       [sys.executable, "-c", "import ProgressiveRegistrationLib.registration.pipeline"])):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=cwd, capture_output=True, check=True, env=env)
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def registration_seconds(summary: dict) -> float:
    return sum(v for k, v in summary["seconds"].items() if k != "write")


def case_rows(case: str, threads: int, repeat: int, baseline: Path | None, elastix: bool, work: Path) -> dict:
    paths = write_case(case, work / case)
    checkouts = [("ours", ROOT)] + ([("baseline", baseline)] if baseline else [])
    for _, checkout in checkouts:  # fill each checkout's compiled-kernel cache
        progreg(checkout, paths, work / case / "warm", threads, [])
    row: dict = {"case": case, "voxels": int(np.prod(sitk.ReadImage(str(paths[0])).GetSize()))}
    for variant, extra in (("default", []), ("lean", LEAN)):
        medians = median_runs(checkouts, paths, work / case / variant, threads, extra, repeat)
        for who, run in medians.items():
            row[(who, variant)] = run
            print(f"{case} {who} {variant}: {run['walls']}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as cache:
        row["first"] = progreg(ROOT, paths, work / case / "first", threads, [], {"NUMBA_CACHE_DIR": cache})
    row["writing"] = writing_rows(work / case / "default" / "ours")
    if elastix:
        row["elastix_s"], tre, _ = run_elastix(paths, threads)
        row["elastix_tre"] = tre
        print(f"{case} elastix: {row['elastix_s']:.1f} s", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict], threads: int, repeat: int, baseline: Path | None, boot: dict) -> list[str]:
    source = SHARED_CT.name if SHARED_CT.is_file() else SAMPLE.name
    lines = ["# The whole `progreg register` command on real anatomy (benchmarks/bench_whole_command.py)", "",
             f"{threads} threads, {platform.machine()}; each of ours the median of {repeat} runs, each a new process "
             "as a user runs it (process wall time from the parent: interpreter, imports, reading, registration, "
             "writing); elastix once, the same pair, in the same run. Real CT: the bundled sample (small pair) and "
             f"`{source}` (full chest), each with a simulated exhale (15 mm, lungs 5 % denser) and 100 exact "
             "landmarks.", ""]
    if baseline:
        commit = subprocess.run(["git", "-C", str(baseline), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True).stdout.strip()
        lines += [f"\"before\": the same commands of another checkout, run in turn with ours (ours, before, ours, …): "
                  f"`{commit}`.", ""]
    for r in rows:
        ours_d, ours_l = r[("ours", "default")], r[("ours", "lean")]
        s = ours_d["summary"]
        lines += [f"## {CASES[r['case']]} ({r['voxels'] / 1e6:.1f} M voxels)", ""]
        head = "| | ours, default outputs | ours, `--no-report --no-warped --no-overview` |"
        sep = "|---|---|---|"
        if baseline:
            head += " before, default outputs | before, lean |"
            sep += "---|---|"
        lines += [head, sep]

        def cells(key, fmt, r=r):
            out = [fmt(r[("ours", "default")]), fmt(r[("ours", "lean")])]
            if baseline:
                out += [fmt(r[("baseline", "default")]), fmt(r[("baseline", "lean")])]
            return "| " + key + " | " + " | ".join(out) + " |"

        lines.append(cells("**process wall time, s**", lambda x: f"**{x['wall']:.1f}**"))
        lines.append(cells("runs (s)", lambda x: ", ".join(f"{w:.1f}" for w in x["walls"])))
        for stage in ("crop", "network", "refine", "transform", "jacobian", "warp", "quality", "write"):
            lines.append(cells(stage + ", s", lambda x, st=stage: f"{x['summary']['seconds'].get(st, float('nan')):.2f}"
                               if st in x["summary"]["seconds"] else "–"))
        lines.append(cells("before the first stage and after the last (start-up, reading, log), s",
                           lambda x: f"{x['wall'] - sum(x['summary']['seconds'].values()):.2f}"))
        lines.append(cells("TRE after (mm): mean, max", lambda x: f"{x['summary']['tre_after_mm']['mean']:.3f}, "
                                                                  f"{x['summary']['tre_after_mm']['max']:.2f}"))
        lines.append("")
        lines.append("Each output's own writing time (s; outputs are written side by side, so they overlap): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in s.get("seconds_per_file", {}).items()) + ".")
        lines.append("")
        first = r["first"]
        lines.append(f"First run after installation (empty compiled-kernel cache, the same default command): "
                     f"{first['wall']:.1f} s, against {ours_d['wall']:.1f} s once the kernels are cached.")
        lines.append("")
        if "elastix_s" in r:
            el = r["elastix_s"]
            lines += [f"elastix B-spline: {el:.1f} s registration alone, TRE {r['elastix_tre']['mean']:.3f} mm "
                      f"(max {r['elastix_tre']['max']:.2f}). elastix / ours: **{el / ours_d['wall']:.1f}×** against "
                      f"our whole default command, **{el / ours_l['wall']:.1f}×** against the lean one, "
                      f"{el / registration_seconds(s):.1f}× against our registration stages alone.", ""]
        if baseline:
            b_d, b_l = r[("baseline", "default")], r[("baseline", "lean")]
            lines += [f"Before / after (same run): default command {b_d['wall'] / ours_d['wall']:.2f}× faster, "
                      f"lean {b_l['wall'] / ours_l['wall']:.2f}× faster; TRE change (mean) "
                      f"{ours_d['summary']['tre_after_mm']['mean'] - b_d['summary']['tre_after_mm']['mean']:+.4f} mm.", ""]
        lines += ["| output | voxels | as written | raw: MB, s | gzip: MB, s | gzip saves | gzip costs |",
                  "|---|---|---|---|---|---|---|"]
        for w in r["writing"]:
            (t_raw, b_raw), (t_gz, b_gz) = w[False], w[True]
            lines.append(f"| {w['name']} | {w['type']} | {w['written']} | {b_raw / 1e6:.1f}, {t_raw:.3f} | "
                         f"{b_gz / 1e6:.1f}, {t_gz:.3f} | {100 * (1 - b_gz / b_raw):.0f} % | {t_gz / max(t_raw, 1e-4):.0f}× "
                         "the time |")
        lines.append("")
    lines += ["## Start-up", "", "| | s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in boot.items()]
    lines += ["", "Best of 3 new processes each."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a checkout of another commit, timed beside ours")
    ap.add_argument("--skip-elastix", action="store_true")
    ap.add_argument("--case", choices=list(CASES), action="append", help="(repeatable) default: both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [case_rows(c, args.threads, args.repeat, args.baseline, not args.skip_elastix, Path(d))
                for c in (args.case or list(CASES))]
    boot = start_up(args.threads)
    publish(table(rows, args.threads, args.repeat, args.baseline, boot), "whole_command.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
