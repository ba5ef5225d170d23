"""The data subcommands: ``tre``, ``dirlab``, ``series``, ``synth``, ``phantom``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import SimpleITK as sitk
import torch

from ..core.atomic import write_all
from ..core.checks import check_pairs
from ..core.device import pick_device
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import read_transform, transform_points
from ..core.metrics import snap_to_voxel, summary, tre_mm
from ..io.dirlab import parse_cases
from ..io.images import is_image_path, list_dicom_series, phase_order, read_image
from ..io.landmarks import read_landmarks, write_markups_json
from ..model.config import load_config
from ..registration.evaluation import evaluate_dirlab
from ..simulation.breathing import simulate
from ..simulation.phantom import generate
from ..training.synthesis import make_pair, pair_generator, prepare_volume
from .common import refinement

# --- tre ----------------------------------------------------------------------------------

def cmd_tre(args) -> int:
    fixed_lm, moving_lm = read_landmarks(args.fixed_points), read_landmarks(args.moving_points)
    check_pairs(fixed_lm.points, moving_lm.points, f"{args.fixed_points} / {args.moving_points}")
    fixed, moving = fixed_lm.to_lps(spacing_mm=args.spacing), moving_lm.to_lps(spacing_mm=args.spacing)
    if args.snap and not args.spacing:
        raise InputError("--snap needs --spacing (the voxel grid to snap to)")
    before = tre_mm(fixed, moving)
    result = {"before_mm": summary(before)}
    after = None
    if args.transform:
        predicted = transform_points(read_transform(args.transform), fixed)
        if args.snap:
            predicted = snap_to_voxel(predicted, Grid((1, 1, 1), tuple(args.spacing), (0.0, 0.0, 0.0)))
        after = tre_mm(predicted, moving)
        result["after_mm"] = summary(after)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'label':>8} {'before_mm':>10}" + (f" {'after_mm':>10}" if after is not None else ""))
    for i, label in enumerate(fixed_lm.labels):
        print(f"{label:>8} {before[i]:10.2f}" + (f" {after[i]:10.2f}" if after is not None else ""))
    for key, s in result.items():
        print(f"{key}: {s['mean']:.2f} ± {s['sd']:.2f} mm (n = {s['n']})")
    return 0



# --- dirlab -------------------------------------------------------------------------------

def cmd_dirlab(args) -> int:
    def progress(case, message):
        print(f"case {case}: {message}", file=sys.stderr, flush=True)

    # Resolved here, once: the model is loaded on the device before any case is registered.
    device, notice = pick_device(args.device)
    if notice:
        print(f"progreg dirlab: {notice}", file=sys.stderr)
    result = evaluate_dirlab(args.folder, parse_cases(args.cases), args.model, device, progress, refinement(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'case':>4} {'n':>4} {'before (mm)':>15} {'paper before':>15} {'after (mm)':>15} {'snapped':>15} {'folding':>8}")
    for case, r in result["cases"].items():
        b, p = r["before_mm"], r["paper_before_mm"]
        line = f"{case:>4} {r['n']:>4} {b['mean']:6.2f} ± {b['sd']:5.2f} {p['mean']:6.2f} ± {p['sd']:5.2f}"
        if "after_mm" in r:
            a, s = r["after_mm"], r["after_snapped_mm"]
            line += f" {a['mean']:6.2f} ± {a['sd']:5.2f} {s['mean']:6.2f} ± {s['sd']:5.2f} {r['folding_percent']:7.2f}%"
        else:
            line += "   (no images: TRE after registration needs CaseNPack/Images/caseN_T00*.img and _T50)"
        print(line)
    return 0



# --- series -------------------------------------------------------------------------------

def cmd_series(args) -> int:
    if not Path(args.folder).is_dir():
        raise InputError(f"{args.folder}: not a directory")
    found = list_dicom_series(args.folder)
    if not found:
        raise InputError(f"{args.folder}: no DICOM series found in this directory")
    ordered, rule = phase_order(found)
    if len(found) > 1:
        print(f"{len(found)} series, in phase order by {rule} (the order register-4d uses):")
    for k, s in enumerate(ordered):
        print(f"{k:>3}  {s}" + (f"  patient {s.patient_id}" if s.patient_id else ""))
    return 0


# --- synth --------------------------------------------------------------------------------

def cmd_synth(args) -> int:
    cfg = load_config(args.config, [f"synthesis.size={args.size}"]).synthesis
    image = read_image(args.image, args.series)
    volume = prepare_volume(image, cfg, str(args.image))
    pair = make_pair(volume, cfg, pair_generator(args.seed, 0))

    def to_image(array: torch.Tensor, vector: bool = False) -> sitk.Image:
        img = sitk.GetImageFromArray(array.numpy(), isVector=vector)
        return volume.grid.apply_to(img)

    outputs = {
        "fixed.nii.gz": to_image(pair["fixed"]),
        "moving.nii.gz": to_image(pair["moving"]),
        "displacement.nii.gz": to_image(pair["target"].movedim(0, -1).contiguous(), vector=True),
        "mask.nii.gz": to_image((pair["mask"] > 0.5).to(torch.uint8)),
        "fixed_gradient.nii.gz": to_image(pair["input"][0]),
        "moving_gradient.nii.gz": to_image(pair["input"][1]),
    }
    meta = {"image": str(args.image), "seed": args.seed, "size": args.size,
            "displacement": "u(x) in voxels of the N^3 grid, components x,y,z; fixed(x) = moving(x + u(x))",
            "grid": {"spacing_mm": volume.grid.spacing_mm, "origin_lps": volume.grid.origin_lps}}
    writers = {k: (lambda p, im=v: sitk.WriteImage(im, str(p), True)) for k, v in outputs.items()}
    writers["pair.json"] = lambda p: Path(p).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    write_all(Path(args.out), writers)
    u = pair["target"].numpy()
    print(f"wrote {len(outputs)} images to {args.out}: u range x [{u[0].min():.1f}, {u[0].max():.1f}] "
          f"y [{u[1].min():.1f}, {u[1].max():.1f}] z [{u[2].min():.1f}, {u[2].max():.1f}] voxels")
    return 0



# --- phantom ------------------------------------------------------------------------------------

def cmd_phantom(args) -> int:
    for path in (args.out, args.exhale):
        if path and not is_image_path(path):
            raise InputError(f"{path}: unknown image format (use .nii.gz, .nrrd or .mha)")
    if min(args.size) < 32 or min(args.spacing) <= 0:
        raise InputError("--size needs at least 32 voxels per axis and --spacing positive values")
    ph = generate(args.seed, tuple(args.size), tuple(args.spacing))
    out = Path(args.out)
    writers = {out.name: lambda p: sitk.WriteImage(ph.image, str(p), True)}
    if args.exhale:
        pair = simulate(ph.image, seed=args.seed, amplitude_si_mm=args.amplitude, amplitude_ap_mm=args.amplitude / 3,
                        fixed_landmarks_lps=ph.bifurcations_lps)
        ex = Path(args.exhale)
        if ex.parent.resolve() != out.parent.resolve():
            raise InputError("--exhale must be in the same folder as --out")
        stem = ex.name.split(".")[0]
        writers[ex.name] = lambda p: sitk.WriteImage(pair.exhale, str(p), True)
        writers[f"{out.name.split('.')[0]}_landmarks.mrk.json"] = lambda p: write_markups_json(p, pair.fixed_points_lps)
        writers[f"{stem}_landmarks.mrk.json"] = lambda p: write_markups_json(p, pair.moving_points_lps)
    write_all(out.parent, writers, exclusive=False)
    print(f"wrote {', '.join(writers)} ({len(ph.bifurcations_lps)} vessel bifurcations in the lungs)")
    return 0
