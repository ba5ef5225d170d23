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
from ..simulation.breathing import simulate
from .common import add_device_option, add_refine_options, progress_printer, refinement


def add_register(sub) -> None:
    p = sub.add_parser("register", help="register a moving CT to a fixed CT (one network pass, then a short refinement)",
                       description="Writes transform.<fmt> (ITK displacement field, LPS, resampling direction: "
                                   "Slicer loads it as a grid transform aligning moving to fixed), warped_moving.nrrd, "
                                   "jacobian.nrrd, summary.json, overview.png, with landmarks tre.csv, and the "
                                   "quality report: report.html (AAPM TG-132 checks), quality.nrrd, "
                                   "inverse_consistency.nrrd.")
    p.add_argument("fixed", help="fixed image (e.g. inhale): file or DICOM folder")
    p.add_argument("moving", help="moving image (e.g. exhale): file or DICOM folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fixed-landmarks", help="landmarks in the fixed image (any supported format)")
    p.add_argument("--moving-landmarks", help="corresponding landmarks in the moving image")
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    p.add_argument("--size", type=int, help="network grid N (default: the model's)")
    p.add_argument("--format", default="nrrd", choices=["nrrd", "nii.gz", "h5"], help="transform file format")
    p.add_argument("--moving-segmentation", metavar="LABELS",
                   help="a label map on the moving image: written on the fixed grid (moving_segmentation.nrrd)")
    p.add_argument("--fixed-segmentation", metavar="LABELS",
                   help="a label map on the fixed image: the report compares it with the carried moving segmentation "
                        "(Dice, mean surface distance, HD95)")
    p.add_argument("--tolerances", metavar="FILE", help="YAML/JSON file of check tolerances for the report "
                                                        "({check: {warn: x, fail: y}}; default: AAPM TG-132's)")
    p.add_argument("--no-report", action="store_true", help="no quality report (report.html, quality.nrrd)")
    p.add_argument("--fixed-series", help="DICOM series UID of the fixed image")
    p.add_argument("--moving-series", help="DICOM series UID of the moving image")
    add_refine_options(p)
    p.add_argument("--no-warped", action="store_true", help="do not write warped_moving.nrrd")
    p.add_argument("--no-overview", action="store_true", help="do not write overview.png")
    p.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout (for Slicer)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_register)


def cmd_register(args) -> int:
    summary = register_files(args.fixed, args.moving, args.out, args.fixed_landmarks, args.moving_landmarks,
                             args.model, args.device, args.size, args.format,
                             (args.fixed_series, args.moving_series), progress_printer(args.progress_json),
                             refinement(args), write_warped=not args.no_warped, write_overview=not args.no_overview,
                             moving_segmentation=args.moving_segmentation, report=not args.no_report,
                             fixed_segmentation=args.fixed_segmentation, tolerances=args.tolerances)
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


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="register the bundled CT sample to a simulated exhale of itself")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    add_refine_options(p)
    p.set_defaults(func=cmd_demo)


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


def add_register_4d(sub) -> None:
    p = sub.add_parser("register-4d", help="register every phase of a 4DCT to a reference phase (motion, ventilation)",
                       description="Registers each PHASE (moving) to the reference phase (fixed). Writes DIR/phase_<k>/ "
                                   "(transform, jacobian.nrrd, ventilation_jacobian.nrrd, ventilation_hu.nrrd, "
                                   "summary.json, segmentation.nrrd), and phases.csv, phases.png, summary.json and, "
                                   "with --points, trajectories.csv. A DICOM folder holding several series expands to "
                                   "them in phase order (see `progreg series`).")
    p.add_argument("phases", nargs="+", metavar="PHASE", help="image file or DICOM folder (several series: all of them)")
    p.add_argument("--reference", type=int, default=0, metavar="K", help="index of the reference phase (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--points", metavar="FILE",
                   help="points of the reference phase (any landmark format): their position in every phase")
    p.add_argument("--segmentation", metavar="LABELS", help="a label map to carry to every phase")
    p.add_argument("--segmentation-phase", type=int, metavar="J",
                   help="the phase the label map is on (default: the reference)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="the phases' names in the outputs, one per phase")
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    p.add_argument("--format", default="nrrd", choices=["nrrd", "nii.gz", "h5"], help="transform file format")
    p.add_argument("--tolerances", metavar="FILE", help="YAML/JSON file of check tolerances for the reports")
    p.add_argument("--no-report", action="store_true", help="no quality reports (report.html, per phase too)")
    add_refine_options(p)
    p.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout (for Slicer)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_register_4d)


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
            print(f"{r['phase']:>5} {r['volume_change_percent']:>+13.2f}% {r['mean_displacement_mm']:>8.2f}mm "
                  f"{r['p95_displacement_mm']:>6.2f}mm {r['folding_percent']:>7.3f}%  {r['name']}")
        print(f"outputs in {args.out}: {', '.join(f for f in summary['files'] if '/' not in f)} and phase_*/")
    return 0
