"""``progreg register``, ``progreg register-4d`` and ``progreg demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import SimpleITK as sitk

from ..core.atomic import write_all
from ..io.images import read_image
from ..io.landmarks import write_markups_json
from ..io.resources import BUNDLED_SAMPLE
from ..registration.outputs import json_text
from ..registration.pipeline import register_4d_files, register_files
from ..registration.tolerances import signed
from ..simulation.breathing import simulate
from .common import progress_printer, refinement


def cmd_register(args) -> int:
    summary = register_files(args.fixed, args.moving, args.out, args.fixed_landmarks, args.moving_landmarks,
                             args.model, args.device, args.size, args.format,
                             (args.fixed_series, args.moving_series), progress_printer(args.progress_json),
                             refinement(args), write_warped=not args.no_warped, write_overview=not args.no_overview,
                             moving_segmentation=args.moving_segmentation, report=not args.no_report,
                             fixed_segmentation=args.fixed_segmentation, tolerances=args.tolerances,
                             write_inverse=args.inverse, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
                             initial_transform=args.initial_transform, dicom_reg=args.dicom_reg)
    if args.json:
        print(json_text(summary))
    elif not args.progress_json:
        print_summary(summary, args.out)
    return 0


def print_summary(summary: dict, out) -> None:
    if "tre_before_mm" in summary:
        b, n, a = summary["tre_before_mm"], summary["tre_network_mm"], summary["tre_after_mm"]
        if summary.get("refinement"):
            print(f"TRE before: {b['mean']:.2f} ± {b['sd']:.2f} mm   network: {n['mean']:.2f} ± {n['sd']:.2f} mm   "
                  f"refined: {a['mean']:.2f} ± {a['sd']:.2f} mm   (n = {a['n']})")
        else:
            print(f"TRE before: {b['mean']:.2f} ± {b['sd']:.2f} mm   after: {a['mean']:.2f} ± {a['sd']:.2f} mm   "
                  f"(n = {a['n']})")
    print(f"folding: {summary['folding_percent']:.3f} % of body voxels (Jacobian determinant <= 0)")
    if summary.get("quality"):
        q = summary["quality"]
        flagged = [f"{r['check']} {r['verdict']}" for r in q["checks"] if r["verdict"] in ("WARN", "FAIL")]
        print(f"quality checks: {q['overall']}" + (f" ({', '.join(flagged)})" if flagged else "") + " — see report.html")
    secs = summary["seconds"]
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items()))
    print(f"outputs in {out}: {', '.join(summary['files'])}")


def cmd_demo(args) -> int:
    refine = refinement(args)
    out = Path(args.out)
    inputs = out / "inputs"
    inhale = read_image(BUNDLED_SAMPLE)
    pair = simulate(inhale, seed=args.seed)
    print(f"sample: {BUNDLED_SAMPLE.name} {inhale.GetSize()} voxels; simulated exhale with "
          f"{len(pair.moving_points_lps)} landmark pairs", file=sys.stderr)
    write_all(inputs, {
        "inhale_fixed.nrrd": lambda p: sitk.WriteImage(pair.inhale, str(p), True),
        "exhale_moving.nrrd": lambda p: sitk.WriteImage(pair.exhale, str(p), True),
        "fixed_landmarks.mrk.json": lambda p: write_markups_json(p, pair.fixed_points_lps, name="F"),
        "moving_landmarks.mrk.json": lambda p: write_markups_json(p, pair.moving_points_lps, name="M"),
    })
    summary = register_files(inputs / "inhale_fixed.nrrd", inputs / "exhale_moving.nrrd", out,
                             inputs / "fixed_landmarks.mrk.json", inputs / "moving_landmarks.mrk.json",
                             args.model, args.device, progress=progress_printer(False), refinement=refine)
    print_summary(summary, out)
    return 0


def cmd_register_4d(args) -> int:
    summary = register_4d_files(args.phases, args.out, args.reference, args.points, args.segmentation,
                                args.segmentation_phase, args.model, args.device, refinement(args), args.format,
                                progress_printer(args.progress_json), args.names, report=not args.no_report,
                                tolerances=args.tolerances)
    if args.json:
        print(json_text(summary))
    elif not args.progress_json:
        print(f"{len(summary['phases'])} phases, reference {summary['reference']} (order: {summary['order']})")
        print(f"{'phase':>5} {'volume change':>14} {'mean |d|':>9} {'p95 |d|':>8} {'folding':>8}  name")
        for r in summary["phases"]:
            print(f"{r['phase']:>5} {signed(r['volume_change_percent'], 2):>13}% {r['mean_displacement_mm']:>8.2f}mm "
                  f"{r['p95_displacement_mm']:>6.2f}mm {r['folding_percent']:>7.3f}%  {r['name']}")
        print(f"outputs in {args.out}: {', '.join(f for f in summary['files'] if '/' not in f)} and phase_*/")
    return 0
