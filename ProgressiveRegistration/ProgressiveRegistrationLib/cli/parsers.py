"""Every subcommand's arguments: the parser that ``progreg --help`` and the Slicer module's
background runs build before any work. Light on purpose (no torch, no SimpleITK readers):
each subcommand names its handler as ``"module:function"`` of this package, imported only when
that subcommand runs (:func:`ProgressiveRegistrationLib.cli.main`), so that ``--help`` and a
bad argument answer at once.
"""

from __future__ import annotations

import argparse

from .common import add_device_option, add_refine_options

#: Where landmarks are asked for: every format read, and its frame.
LANDMARK_FORMATS = ("Slicer .mrk.json/.fcsv (mm, their own LPS or RAS), DIR-Lab .txt (1-based voxel indices of "
                    "the image), elastix/transformix point files ('point': mm LPS, 'index': 0-based voxels), CSV with "
                    "l,p,s or r,a,s columns (mm)")


class HelpFormatter(argparse.HelpFormatter):
    """States every option's default in its help, unless the help says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or action.nargs == 0):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default {shown})"


def _parser(sub, name: str, **kwargs):
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_register(sub) -> None:
    p = _parser(sub, "register", help="register a moving CT to a fixed CT (one network pass, then a short refinement)",
                description="Writes transform.<fmt> (ITK displacement field, LPS, resampling direction: "
                            "Slicer loads it as a grid transform aligning moving to fixed), warped_moving.nrrd, "
                            "jacobian.nrrd, summary.json, overview.png, with landmarks tre.csv, and the "
                            "quality report: report.html (AAPM TG-132 checks), quality.nrrd, "
                            "inverse_consistency.nrrd.")
    p.add_argument("fixed", help="fixed image (e.g. inhale): file or DICOM folder")
    p.add_argument("moving", help="moving image (e.g. exhale): file or DICOM folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fixed-landmarks", metavar="FILE", help=f"landmarks in the fixed image: {LANDMARK_FORMATS}")
    p.add_argument("--moving-landmarks", metavar="FILE",
                   help="the corresponding landmarks in the moving image, same count and order (any of those formats)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    p.add_argument("--size", type=int, help="network grid N voxels per side (default: the model's, 64 for the bundled)")
    p.add_argument("--format", default="nrrd", choices=["nrrd", "nii.gz", "h5"],
                   help="transform file format: nrrd (Slicer, SimpleITK, ITK), nii.gz (ANTs), h5 (an ITK transform "
                        "file that sitk.ReadTransform reads as it is)")
    p.add_argument("--moving-segmentation", metavar="LABELS",
                   help="a label map on the moving image: written on the fixed grid (moving_segmentation.nrrd)")
    p.add_argument("--fixed-segmentation", metavar="LABELS",
                   help="a label map on the fixed image: the report compares it with the carried moving segmentation "
                        "(Dice, mean surface distance, HD95)")
    p.add_argument("--fixed-mask", metavar="LABELS",
                   help="label map of the fixed image's lungs (any grid of its frame; non-zero inside): replaces the "
                        "computed lung field for the crop, the refinement's similarity and the quality checks")
    p.add_argument("--moving-mask", metavar="LABELS", help="label map of the moving image's lungs: replaces the "
                                                            "computed lung field for the moving crop")
    p.add_argument("--initial-transform", metavar="FILE",
                   help="ITK transform to start from (.h5, .tfm, .txt, .mat, or a displacement-field image), mapping "
                        "fixed points to moving points like the result; transform.<fmt> includes it")
    p.add_argument("--tolerances", metavar="FILE", help="YAML/JSON file of check tolerances for the report "
                                                        "({check: {warn: x, fail: y}}; default: AAPM TG-132's)")
    p.add_argument("--no-report", action="store_true", help="no quality report (report.html, quality.nrrd)")
    p.add_argument("--dicom-reg", action="store_true",
                   help="also write registration.dcm: a DICOM Deformable Spatial Registration object referencing the "
                        "fixed and moving series, for radiotherapy systems (needs DICOM inputs)")
    p.add_argument("--fixed-series", help="DICOM series UID of the fixed image")
    p.add_argument("--moving-series", help="DICOM series UID of the moving image")
    add_refine_options(p)
    p.add_argument("--inverse", action="store_true",
                   help="also write inverse_transform.<fmt>: the inverse on the moving image's grid (carries the fixed "
                        "image's data onto the moving image; its consistency is in summary.json)")
    p.add_argument("--no-warped", action="store_true", help="do not write warped_moving.nrrd")
    p.add_argument("--no-overview", action="store_true", help="do not write overview.png")
    p.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout (for Slicer)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func="register:cmd_register")


def add_demo(sub) -> None:
    p = _parser(sub, "demo", help="register the bundled CT sample to a simulated exhale of itself")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated breathing motion")
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    add_refine_options(p)
    p.set_defaults(func="register:cmd_demo")


def add_register_4d(sub) -> None:
    p = _parser(sub, "register-4d", help="register every phase of a 4DCT to a reference phase (motion, ventilation)",
                description="Registers each PHASE (moving) to the reference phase (fixed). Writes DIR/phase_<k>/ "
                            "(transform, jacobian.nrrd, ventilation_jacobian.nrrd, ventilation_hu.nrrd, "
                            "summary.json, segmentation.nrrd), and phases.csv, phases.png, summary.json and, "
                            "with --points, trajectories.csv. A DICOM folder holding several series expands to "
                            "them in phase order (see `progreg series`).")
    p.add_argument("phases", nargs="+", metavar="PHASE", help="image file or DICOM folder (several series: all of them)")
    p.add_argument("--reference", type=int, default=0, metavar="K", help="index of the reference phase (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--points", metavar="FILE",
                   help=f"points of the reference phase, followed in every phase: {LANDMARK_FORMATS}")
    p.add_argument("--segmentation", metavar="LABELS", help="a label map to carry to every phase")
    p.add_argument("--segmentation-phase", type=int, metavar="J",
                   help="the phase the label map is on (default: the reference)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="the phases' names in the outputs, one per phase")
    p.add_argument("--model", help="model file (default: the bundled model)")
    add_device_option(p)
    p.add_argument("--format", default="nrrd", choices=["nrrd", "nii.gz", "h5"], help="transform file format")
    p.add_argument("--tolerances", metavar="FILE", help="YAML/JSON file of check tolerances for the reports "
                                                        "(default: AAPM TG-132's and the project's)")
    p.add_argument("--no-report", action="store_true", help="no quality reports (report.html, per phase too)")
    add_refine_options(p)
    p.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout (for Slicer)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func="register:cmd_register_4d")


def add_apply(sub):
    p = _parser(sub, "apply", help="apply a transform to an image, a label map or points (moving -> fixed)",
                description="Carries INPUT from the moving image's space into the fixed image's with TRANSFORM (a "
                     "transform.nrrd of `progreg register`, or any ITK transform file), which maps a fixed "
                     "point x to the moving point T(x) (the resampling direction). An image or label map is "
                     "resampled onto --reference's grid: out(x) = INPUT(T(x)). Points (.mrk.json, .fcsv, "
                     "elastix, CSV, DIR-Lab .txt) of the moving image go through the inverse: the x with "
                     "T(x) = y. To carry the fixed image's data the other way, apply the inverse transform "
                     "(`progreg register --inverse` writes it).")
    p.add_argument("transform", metavar="TRANSFORM", help="transform file: .nrrd/.nii.gz/.mha field, .h5, .tfm, .txt")
    p.add_argument("input", metavar="INPUT", help="image, label map or point file of the moving image's space")
    p.add_argument("--reference", metavar="IMAGE",
                   help="the grid of the result (the fixed image, say); for voxel-indexed points, the image they index")
    p.add_argument("--out", required=True, help="output file (an image format, or .mrk.json/.csv for points)")
    p.add_argument("--interpolation", choices=["linear", "bspline", "nearest"], default="linear",
                   help="of images")
    p.add_argument("--labels", nargs="?", const="nearest", choices=["nearest", "smooth"],
                   help="INPUT is a label map: nearest neighbour, or 'smooth': each label interpolated linearly, the "
                        "likeliest kept, so that thin structures survive (default: an image)")
    p.add_argument("--default-value", type=float, default=-1024.0,
                   help="value where INPUT has no data (HU of air, for CT; 0 suits most other images)")
    p.set_defaults(func="apply:cmd_apply")


def add_tre(sub):
    p = _parser(sub, "tre", help="target registration error of two landmark files, before and after a transform",
                description="Landmark TRE (mm). Voxel-indexed files (DIR-Lab txt, elastix 'index') need --spacing; "
                            "the transform maps fixed to moving points (ITK resampling direction).")
    p.add_argument("fixed_points", help=f"landmarks in the fixed image: {LANDMARK_FORMATS}")
    p.add_argument("moving_points", help="the corresponding landmarks in the moving image (same count and order)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("SX", "SY", "SZ"),
                   help="voxel spacing in mm, x y z (needed for voxel-indexed files; default: none)")
    p.add_argument("--transform", help="ITK transform (.h5, .tfm, .txt) or displacement-field image, fixed -> moving "
                                       "(default: none, the TRE before registration)")
    p.add_argument("--snap", action="store_true", help="round transformed points to the nearest voxel (needs --spacing)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func="data:cmd_tre")


def add_dirlab(sub):
    p = _parser(sub, "dirlab", help="TRE of the DIR-Lab 4DCT cases (extreme phases, 300 landmarks)")
    p.add_argument("folder", help="folder holding Case1Pack ... Case10Pack (or Case8Deploy)")
    p.add_argument("--cases", default="1-10", help="e.g. 1-10 or 1,3,8 (default 1-10)")
    p.add_argument("--model", help="model for the cases whose images are present (default: the bundled model)")
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (per-case TRE, mm) instead of the table")
    add_refine_options(p)
    p.set_defaults(func="data:cmd_dirlab")


def add_series(sub):
    p = _parser(sub, "series", help="list the DICOM series in a folder (UID, description, slices), in phase order")
    p.add_argument("folder", help="a folder of DICOM files (searched with its subfolders)")
    p.set_defaults(func="data:cmd_series")


def add_synth(sub):
    p = _parser(sub, "synth", help="write one synthetic training pair (paper Sec. II-E) of a CT image")
    p.add_argument("image", help="CT image (NIfTI, NRRD, MHA, DIR-Lab .img) or DICOM folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random B-spline transform")
    p.add_argument("--size", type=int, default=128, help="network grid N voxels per side (a multiple of 16 for the "
                                                         "paper's network)")
    p.add_argument("--series", help="DICOM series UID when the folder holds several")
    p.add_argument("--config", help="config file whose 'synthesis' section to use")
    p.set_defaults(func="data:cmd_synth")


def add_phantom(sub):
    p = _parser(sub, "phantom", help="write a procedural thorax CT phantom (and optionally a breathing pair)")
    p.add_argument("--out", required=True, help="output image (.nii.gz, .nrrd, .mha)")
    p.add_argument("--seed", type=int, default=0, help="seed of the anatomy (and of the breathing motion)")
    p.add_argument("--size", type=int, nargs=3, default=[192, 160, 128], metavar=("NX", "NY", "NZ"),
                   help="voxels along x, y, z")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.6, 1.6, 2.5], metavar=("SX", "SY", "SZ"),
                   help="voxel spacing along x, y, z, mm")
    p.add_argument("--exhale", help="also write a simulated exhale image here, with landmark files beside it")
    p.add_argument("--amplitude", type=float, default=20.0, help="diaphragm motion of the exhale, mm (default 20.0)")
    p.set_defaults(func="data:cmd_phantom")


def add_batch(sub) -> None:
    p = _parser(sub, "batch", help="register every case of a manifest (a cohort) on Dask, resumably",
                description="A manifest row is a pair (id, fixed, moving[, fixed_landmarks, moving_landmarks, "
                            "moving_segmentation]) or a 4DCT (id, phases, reference); relative paths are "
                            "relative to the manifest. Each case is written into OUT/<id>/ as progreg register "
                            "or register-4d writes it; a rerun skips the cases done with the same inputs and "
                            "settings. OUT/cohort.csv and OUT/cohort.html hold the study.")
    p.add_argument("manifest", help="CSV manifest of the cases")
    p.add_argument("--out", required=True, help="output folder (a subfolder per case)")
    p.add_argument("--workers", type=int, help="local Dask worker processes (default: one per two cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--gpus-per-worker", type=int, default=0, metavar="G",
                   help="GPUs of each local worker (a Dask resource; each case takes one; implies --device cuda)")
    p.add_argument("--threads-per-worker", type=int, help="torch threads per worker with --scheduler (default 1)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto (CUDA where torch sees a GPU), cpu or cuda")
    p.add_argument("--format", default="nrrd", choices=["nrrd", "nii.gz", "h5"], help="transform file format")
    p.add_argument("--tolerances", metavar="FILE", help="YAML/JSON file of check tolerances for the reports")
    p.add_argument("--no-report", action="store_true", help="no quality report per case")
    add_refine_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func="batch:cmd_batch")


def add_train(sub) -> None:
    p = _parser(sub, "train", help="train the progressive (and baseline) network on synthetic pairs",
                description="Train on synthetic B-spline pairs of CT images (paper Sec. II-E/F). "
                            "Writes log.csv, checkpoint.pt, model.pt and figures into --out.")
    add_train_arguments(p)
    p.set_defaults(func="train:cmd_train")


def add_train_arguments(p) -> None:
    p.add_argument("--config", help="JSON or YAML config (defaults: the paper's values)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--export", action="store_true",
                   help="only write OUT/model.pt (and model_baseline.pt) from OUT/checkpoint.pt's last snapshot")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run (32³, 3 levels, 120 iterations, both arms) on the bundled sample")
    p.add_argument("--images", nargs="+", help="training images (files, folders, DICOM folders)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=500")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
