"""Whole `progreg register` on a 512×512×~130 CT pair, stage by stage, peak memory, and
elastix B-spline (itk-elastix) on the same pair in the same run: time and TRE; then the
refinement's accuracy on other pairs.

In the same run, on the large pair: the default registration (network + refinement), the
network alone (``--no-refine``), the network alone on the reference paths
(``PROGREG_NUMBA=0``), and the paper-size network at 128³ with Glorot weights (time only).

The large pair: a real chest CT (the CT next to the project if present, else the bundled
sample) resampled into a 512×512×130 grid of 0.7×0.7×2.5 mm, and a simulated exhale of it
(breathing.py: diaphragm motion up to 15 mm, AP expansion, sliding) with exact landmark pairs.

Other pairs (network alone against network + refinement, in-process): the demo pair; the
17 held-out phantom breathing pairs of ``experiments/paper_cpu.py``; the bundled CT against
a simulated exhale in which the lungs are also denser (lung HU moved 5 % toward soft
tissue), so that the metric is not tuned to identical intensities.

Clinical-size pairs without patient data (in-process, default refinement, per refinement
level its grid, seconds and ns per voxel and iteration): a phantom (simulation/phantom.py,
both lungs) at 512×512×130 of 0.98×0.98×2 mm and its simulated exhale; the same anatomy
resampled to 1.37×1.37×2.5 mm (366×366×104) and its exhale.

    python benchmarks/bench_register.py [--skip-elastix] [--skip-pairs] [--skip-clinical] [--threads 2]
    python benchmarks/bench_register.py --clinical-only [--clinical-case 0.98|1.37]   # prints, writes nothing

Writes benchmarks/results/register.md.
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

from ProgressiveRegistrationLib.core.metrics import summary, tre_mm  # noqa: E402
from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

SHARED_CT = ROOT.parent / "shared" / "data" / "ct" / "totalsegmentator" / "chest_crop_aorta.nii.gz"
SAMPLE = ROOT / "ProgressiveRegistration" / "Resources" / "Sample" / "lung_ct_small.mha"

# A lung B-spline parameter set in the style of the elastix model zoo (Par0011/Par0016 family):
# 4 resolutions, advanced Mattes MI, B-spline grid 10 mm, adaptive stochastic gradient descent.
ELASTIX_BSPLINE = {
    "Registration": ["MultiResolutionRegistration"],
    "Metric": ["AdvancedMattesMutualInformation"],
    "NumberOfHistogramBins": ["32"],
    "Transform": ["BSplineTransform"],
    "FinalGridSpacingInPhysicalUnits": ["10"],
    "GridSpacingSchedule": ["8", "4", "2", "1"],
    "NumberOfResolutions": ["4"],
    "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
    "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
    "Optimizer": ["AdaptiveStochasticGradientDescent"],
    "MaximumNumberOfIterations": ["500"],
    "ImageSampler": ["RandomCoordinate"],
    "NumberOfSpatialSamples": ["5000"],
    "NewSamplesEveryIteration": ["true"],
    "Interpolator": ["BSplineInterpolator"],
    "BSplineInterpolationOrder": ["1"],
    "ResampleInterpolator": ["FinalBSplineInterpolator"],
    "FinalBSplineInterpolationOrder": ["3"],
    "Resampler": ["DefaultResampler"],
    "DefaultPixelValue": ["-1024"],
    "HowToCombineTransforms": ["Compose"],
    "AutomaticTransformInitialization": ["false"],
    "WriteResultImage": ["false"],
    "ResultImagePixelType": ["short"],
}


def full_fov_ct(size=(512, 512, 130), spacing=(0.7, 0.7, 2.5)) -> sitk.Image:
    """The benchmark's inhale CT: a real chest CT (the one next to the project if present,
    else the bundled sample) in a ``size`` grid of ``spacing`` mm (512×512×130 of 0.7×0.7×2.5
    mm unless given), int16."""
    source = SHARED_CT if SHARED_CT.is_file() else SAMPLE
    ct = sitk.ReadImage(str(source), sitk.sitkFloat32)
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()]))
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin((centre - (np.asarray(size) - 1) / 2 * np.asarray(spacing)).tolist())
    # The source is a crop that cuts through the chest: pad it with soft tissue inside an
    # elliptical body outline and air outside, so that the lungs are enclosed as in a
    # full-field-of-view scan.
    fixed = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, 40.0, sitk.sitkInt16)
    arr = sitk.GetArrayFromImage(fixed)
    j, i = np.mgrid[0:size[1], 0:size[0]]
    outside = ((i - size[0] / 2) * spacing[0] / 175.0) ** 2 + ((j - size[1] / 2) * spacing[1] / 130.0) ** 2 > 1
    arr[:, outside] = -1000
    padded = sitk.GetImageFromArray(arr)
    padded.CopyInformation(fixed)
    return padded


def make_pair(out: Path) -> tuple[Path, Path, Path, Path]:
    fixed = full_fov_ct()
    pair = simulate(fixed, seed=0, amplitude_si_mm=15.0, amplitude_ap_mm=5.0, n_landmarks=100)
    paths = (out / "fixed.nrrd", out / "moving.nrrd", out / "fixed.mrk.json", out / "moving.mrk.json")
    sitk.WriteImage(pair.inhale, str(paths[0]), True)
    sitk.WriteImage(pair.exhale, str(paths[1]), True)
    write_markups_json(paths[2], pair.fixed_points_lps)
    write_markups_json(paths[3], pair.moving_points_lps)
    return paths


def paper_size_model(path: Path) -> Path:
    """The paper's network (5 levels, 16…256 channels) at 128³, Glorot weights, as a model file."""
    import torch

    from ProgressiveRegistrationLib.model.config import NetworkConfig, SynthesisConfig
    from ProgressiveRegistrationLib.model.modelfile import save_model
    from ProgressiveRegistrationLib.model.network import UNet

    torch.manual_seed(0)
    cfg = NetworkConfig()
    save_model(path, UNet(cfg), cfg, SynthesisConfig(size=128), iterations=0, arm="untrained")
    return path


def run_ours(paths, out: Path, threads: int, model: Path | None = None, compiled: bool = True,
             refine: bool = True, device: str = "cpu") -> tuple[dict, float, float]:
    """`register_files` in a new process (as `progreg register` runs); ``compiled=False``:
    PROGREG_NUMBA=0, every stage on its reference path (torch / ITK), the "before";
    ``refine=False``: the network's field alone; ``device``: the torch device (with CUDA the
    summary gets ``peak_gpu_gib``, ``torch.cuda.max_memory_allocated`` of the process)."""
    code = (
        "import json, resource, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import torch\n"
        "from ProgressiveRegistrationLib.registration.pipeline import register_files\n"
        "from ProgressiveRegistrationLib.registration.refine_config import RefineConfig\n"
        f"s = register_files({str(paths[0])!r}, {str(paths[1])!r}, {str(out)!r}, {str(paths[2])!r}, {str(paths[3])!r},"
        f" model={str(model) if model else None!r}, device={device!r},"
        f" refinement={'RefineConfig()' if refine else 'None'})\n"
        "s['wall'] = time.perf_counter() - t0\n"
        "s['peak_rss_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
        "if torch.cuda.is_available():\n"
        "    s['peak_gpu_gib'] = torch.cuda.max_memory_allocated() / 2**30\n"
        "print(json.dumps(s))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "PROGREG_NUMBA": "1" if compiled else "0"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "ProgressiveRegistration", capture_output=True,
                       text=True, env=env, check=True)
    wall = time.perf_counter() - t0
    s = json.loads(r.stdout.strip().splitlines()[-1])
    return s, wall, s["peak_rss_gib"]


def run_elastix(paths, threads: int) -> tuple[float, dict, float]:
    """elastix on ``paths`` in a process of its own, as ours runs: a benchmark process that
    had run elastix itself held its memory, and our next case ran ~15 % slower beside it
    (measured). Returns (registration seconds, TRE summary after, mean TRE before)."""
    from ProgressiveRegistrationLib.io.landmarks import read_landmarks

    seconds, predicted = run_elastix_points(paths, threads)
    f, m = read_landmarks(paths[2]).points, read_landmarks(paths[3]).points
    return seconds, summary(tre_mm(predicted, m)), summary(tre_mm(f, m))["mean"]


def run_elastix_points(paths, threads: int) -> tuple[float, np.ndarray]:
    """elastix on ``paths`` (fixed, moving, fixed landmarks, moving landmarks) in a process of
    its own: (registration seconds, the fixed landmarks mapped by its transform, LPS mm)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_register as b; "
            f"from pathlib import Path; print(json.dumps(b._elastix_in_process([Path(p) for p in "
            f"{[str(p) for p in paths]!r}], {threads}), default=float))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "ProgressiveRegistration", capture_output=True,
                       text=True, env=env, check=True)
    seconds, predicted = json.loads(r.stdout.strip().splitlines()[-1])
    return seconds, np.asarray(predicted, dtype=np.float64)


def _elastix_in_process(paths, threads: int) -> tuple[float, list]:
    import itk

    fixed = itk.imread(str(paths[0]), itk.F)
    moving = itk.imread(str(paths[1]), itk.F)
    params = itk.ParameterObject.New()
    pm = params.GetDefaultParameterMap("bspline")
    for k, v in ELASTIX_BSPLINE.items():
        pm[k] = v
    params.AddParameterMap(pm)
    t0 = time.perf_counter()
    _, result_params = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                       number_of_threads=threads, log_to_console=False)
    seconds = time.perf_counter() - t0
    cwd = os.getcwd()
    os.chdir(paths[0].parent)  # transformix writes deformationField.nii into the working directory
    try:
        field = itk.transformix_deformation_field(moving, result_params)
    finally:
        os.chdir(cwd)
    disp = sitk.GetImageFromArray(itk.array_from_image(field).astype(np.float64), isVector=True)
    disp.SetOrigin(tuple(field.GetOrigin()))
    disp.SetSpacing(tuple(field.GetSpacing()))
    disp.SetDirection(tuple(np.asarray(field.GetDirection()).ravel()))
    tx = sitk.DisplacementFieldTransform(disp)
    from ProgressiveRegistrationLib.io.landmarks import read_landmarks

    f = read_landmarks(paths[2]).points
    return seconds, [tx.TransformPoint(p.tolist()) for p in f]


def denser(exhale: sitk.Image, percent: float = 5.0) -> sitk.Image:
    """``exhale`` with its lungs denser: lung HU moved ``percent`` % toward soft tissue (40 HU),
    as air leaves them on exhale."""
    from ProgressiveRegistrationLib.core.lungs import lung_mask

    exhale = sitk.Cast(exhale, sitk.sitkFloat32)
    lungs = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(lung_mask(exhale), sitk.sitkFloat32), 2.0))
    hu = sitk.GetArrayFromImage(exhale)
    out = sitk.GetImageFromArray((hu + percent / 100.0 * lungs * (40.0 - hu)).astype(np.float32))
    out.CopyInformation(exhale)
    return out


def denser_exhale(seed: int = 0, percent: float = 5.0):
    """The bundled CT and a simulated exhale of it whose lungs are also denser (:func:`denser`)."""
    pair = simulate(sitk.ReadImage(str(SAMPLE)), seed=seed)
    return pair, denser(pair.exhale, percent)


#: The clinical-size phantom: its seed, and the grids ((nx, ny, nz), spacing mm) of its two copies.
CLINICAL_SEED = 300
CLINICAL_GRIDS = {"0.98": ((512, 512, 130), (0.98, 0.98, 2.0)), "1.37": ((366, 366, 104), (1.37, 1.37, 2.5))}


def clinical_pairs(which: tuple[str, ...] = tuple(CLINICAL_GRIDS)) -> list[dict]:
    """Clinical-size breathing pairs of one phantom (both lungs, vessel bifurcations as
    landmarks): generated at 512×512×130 of 0.98×0.98×2 mm; the 1.37×1.37×2.5 mm copy is that
    image resampled (linear) onto a grid over the same extent, so that the anatomy is the
    same. Each gets its own simulated exhale (15 mm diaphragm motion, lungs 5 % denser: :func:`denser`)
    with exact landmarks.
    Dicts with name, fixed, moving, fixed_lps, moving_lps (LPS mm)."""
    from ProgressiveRegistrationLib.simulation.phantom import generate

    size, spacing = CLINICAL_GRIDS["0.98"]
    ph = generate(CLINICAL_SEED, size, spacing)
    image = sitk.Cast(ph.image, sitk.sitkInt16)
    rng = np.random.default_rng(CLINICAL_SEED)
    points = ph.bifurcations_lps[rng.choice(len(ph.bifurcations_lps), min(100, len(ph.bifurcations_lps)),
                                            replace=False)]
    out = []
    for key in which:
        size, spacing = CLINICAL_GRIDS[key]
        if (size, spacing) == CLINICAL_GRIDS["0.98"]:
            fixed = image
        else:
            ref = sitk.Image(size, sitk.sitkInt16)
            ref.SetSpacing(spacing)
            centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
            ref.SetOrigin((centre - (np.asarray(size) - 1) / 2 * np.asarray(spacing)).tolist())
            fixed = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
        pair = simulate(fixed, seed=CLINICAL_SEED, amplitude_si_mm=15.0, amplitude_ap_mm=5.0,
                        fixed_landmarks_lps=points)
        out.append({"name": f"phantom {'×'.join(map(str, size))} at {'×'.join(f'{s:g}' for s in spacing)} mm",
                    "fixed": pair.inhale, "moving": denser(pair.exhale), "fixed_lps": pair.fixed_points_lps,
                    "moving_lps": pair.moving_points_lps})
    return out


def write_pair(p: dict, out: Path) -> tuple[Path, Path, Path, Path]:
    """A pair of :func:`clinical_pairs` as files (NRRD images, Slicer markups landmarks)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "fixed.nrrd", out / "moving.nrrd", out / "fixed.mrk.json", out / "moving.mrk.json")
    sitk.WriteImage(sitk.Cast(p["fixed"], sitk.sitkInt16), str(paths[0]), True)
    sitk.WriteImage(sitk.Cast(p["moving"], sitk.sitkInt16), str(paths[1]), True)
    write_markups_json(paths[2], p["fixed_lps"])
    write_markups_json(paths[3], p["moving_lps"])
    return paths


def memory_bandwidth_gbs(threads: int) -> float:
    """The machine's memory bandwidth (GB/s): the best of five STREAM-style triads
    ``a = b + s·c`` over 3 × 200 MB of float32 with ``threads`` numba threads."""
    import numba

    @numba.njit(parallel=True)
    def triad(a, b, c, s):
        for i in numba.prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    n = 50_000_000
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        triad(a, b, c, np.float32(2.0))
        best = np.inf
        for _ in range(5):
            t0 = time.perf_counter()
            triad(a, b, c, np.float32(2.0))
            best = min(best, time.perf_counter() - t0)
    finally:
        numba.set_num_threads(before)
    return 3 * a.nbytes / best / 1e9


def clinical_rows(which: tuple[str, ...], threads: int, elastix: bool = True) -> list[dict]:
    """The clinical-size pairs through the whole registration in a new process (as `progreg
    register` runs: default settings, the bundled model, the CPU), elastix beside each in the
    same run: TRE, seconds, and the refinement's per-level record."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k, p in enumerate(clinical_pairs(which)):
            paths = write_pair(p, Path(d) / f"case{k}")
            s, wall, peak = run_ours(paths, Path(d) / f"case{k}" / "ours", threads)
            row = {"name": p["name"], "n": len(p["fixed_lps"]), "before": s["tre_before_mm"]["mean"],
                   "network": s["tre_network_mm"]["mean"], "refined": s["tre_after_mm"]["mean"],
                   "refined_max": s["tre_after_mm"]["max"], "folding": s["folding_percent"], "seconds": s["seconds"],
                   "registration": sum(v for key, v in s["seconds"].items() if key != "write"), "wall": wall,
                   "peak": peak, "levels": s["refinement"]["levels"]}
            if elastix:
                row["elastix_s"], tre, _ = run_elastix(paths, threads)
                row["elastix"], row["elastix_max"] = tre["mean"], tre["max"]
            rows.append(row)
            print(f"{p['name']}: {row}", file=sys.stderr, flush=True)
    return rows


def clinical_table(rows: list[dict], threads: int) -> list[str]:
    """Markdown: per pair its TRE and seconds against elastix, then per refinement level its
    grid, seconds, ns per voxel and iteration, and at the finest level the bytes an iteration
    moves against the machine's memory bandwidth."""
    from ProgressiveRegistrationLib.registration.fused import BYTES_PER_VOXEL

    bandwidth = memory_bandwidth_gbs(threads)
    lines = [
        "## Clinical-size pairs without patient data (whole `progreg register`, elastix beside each)",
        "",
        "A phantom (simulation/phantom.py, both lungs; seed "
        f"{CLINICAL_SEED}) and its simulated exhale (15 mm diaphragm motion, lungs denser on exhale), landmarks at "
        "its vessel bifurcations. Ours: default settings (network + refinement), a new process per pair as "
        "`progreg register` runs it. elastix: the B-spline set above, on the same files.",
        "",
        "| pair | landmarks | TRE before (mm) | network alone (mm) | ours: refined (mm) | elastix (mm) | "
        "folding (%) | refinement, s | ours: registration, s | ours: process wall, s | elastix, s | "
        "elastix / ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        el = r.get("elastix_s")
        lines.append(
            f"| {r['name']} | {r['n']} | {r['before']:.2f} | {r['network']:.2f} | {r['refined']:.2f} "
            f"(max {r['refined_max']:.2f}) | "
            + (f"{r['elastix']:.2f} (max {r['elastix_max']:.2f})" if el else "not run") + " | "
            f"{r['folding']:.4f} | {r['seconds']['refine']:.2f} | {r['registration']:.2f} | {r['wall']:.2f} | "
            + (f"{el:.1f} | **{el / r['registration']:.1f}×** |" if el else " | |"))
    lines += ["", "elastix / ours: elastix's registration time over ours (all stages but writing).", "",
              "| pair | level | spacing (mm) | grid | iterations | seconds (incl. setup) | setup, s | "
              "ns / (voxel · iteration) | MB moved / iteration | at the bandwidth, ms | measured, ms | "
              "measured / floor |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k, lv in enumerate(r["levels"]):
            if not lv.get("iterations"):
                lines.append(f"| {r['name']} | {k + 1} | skipped: {lv.get('skipped', 'no iterations')} "
                             "| | | | | | | | | |")
                continue
            voxels = int(np.prod(lv["size"]))
            per_iteration = (lv["seconds"] - lv["setup_seconds"]) / lv["iterations"]
            moved = BYTES_PER_VOXEL * voxels
            floor = moved / (bandwidth * 1e9)
            lines.append(f"| {r['name']} | {k + 1} | {'×'.join(f'{s:g}' for s in lv['spacing_mm'])} | "
                         f"{'×'.join(map(str, lv['size']))} | {lv['iterations']} | {lv['seconds']:.2f} | "
                         f"{lv['setup_seconds']:.2f} | {1e9 * per_iteration / voxels:.0f} | {moved / 1e6:.0f} | "
                         f"{1e3 * floor:.1f} | {1e3 * per_iteration:.1f} | {per_iteration / floor:.1f}× |")
    lines += ["", "ns / (voxel · iteration): the level's seconds less its setup, per grid voxel and Adam iteration "
                  "(the end-of-level NCC² evaluation included). MB moved: "
                  f"{BYTES_PER_VOXEL} bytes per voxel (`registration/fused.py`, BYTES_PER_VOXEL). The bandwidth: "
                  f"{bandwidth:.1f} GB/s, a STREAM-style triad on {threads} threads in the same run."]
    return lines


def other_pairs() -> list[dict]:
    """Network alone and network + refinement, in one call per pair (the refined run reports both)."""
    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    from paper_cpu import evaluation_pairs

    from ProgressiveRegistrationLib.model.modelfile import load_model
    from ProgressiveRegistrationLib.registration.engine import register_images
    from ProgressiveRegistrationLib.registration.refine_config import RefineConfig

    model = load_model()
    demo = simulate(sitk.ReadImage(str(SAMPLE)), seed=0)
    dense, dense_exhale = denser_exhale()
    cases = [("demo pair (bundled CT, simulated exhale)", demo.inhale, demo.exhale, demo.fixed_points_lps,
              demo.moving_points_lps),
             ("bundled CT, exhale with lungs 5 % denser", dense.inhale, dense_exhale, dense.fixed_points_lps,
              dense.moving_points_lps)]
    cases += [(p.name, p.fixed, p.moving, p.fixed_lps, p.moving_lps)
              for p in evaluation_pairs(micro=False) if p.kind == "breathing"]
    rows = []
    for name, fixed, moving, f_lps, m_lps in cases:
        t0 = time.perf_counter()
        r = register_images(fixed, moving, model, "cpu", f_lps, m_lps, warp_moving=False, refinement=RefineConfig())
        rows.append({"name": name, "before": float(r.landmarks["before_mm"].mean()),
                     "network": float(r.landmarks["network_mm"].mean()), "refined": float(r.landmarks["after_mm"].mean()),
                     "folding": r.folding_percent, "refine_s": r.seconds["refine"], "s": time.perf_counter() - t0,
                     "threads": torch.get_num_threads()})
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-elastix", action="store_true")
    ap.add_argument("--skip-pairs", action="store_true", help="only the large pair")
    ap.add_argument("--skip-clinical", action="store_true", help="without the clinical-size phantom pairs")
    ap.add_argument("--clinical-only", action="store_true",
                    help="only the clinical-size phantom pairs: print their table, write nothing")
    ap.add_argument("--clinical-case", choices=list(CLINICAL_GRIDS), action="append",
                    help="one clinical-size case (repeatable; default both)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    which = tuple(args.clinical_case or CLINICAL_GRIDS)
    if args.clinical_only:
        print("\n".join(clinical_table(clinical_rows(which, args.threads, not args.skip_elastix), args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        paths = make_pair(d)
        run_ours(paths, d / "warmup", args.threads)  # file-system and import caches
        s, wall, peak = run_ours(paths, d / "ours", args.threads)
        net, net_wall, net_peak = run_ours(paths, d / "network", args.threads, refine=False)
        ref, _, _ = run_ours(paths, d / "reference", args.threads, compiled=False, refine=False)
        paper = paper_size_model(d / "paper128.pt")
        s128, _, peak128 = run_ours(paths, d / "paper", args.threads, paper, refine=False)
        el = None if args.skip_elastix else run_elastix(paths, args.threads)
    pairs = None if args.skip_pairs else other_pairs()
    clinical = None if args.skip_clinical else clinical_rows(which, args.threads, not args.skip_elastix)

    def total(stages: dict) -> float:
        """Seconds of all stages but writing: the registration itself."""
        return sum(v for k, v in stages.items() if k != "write")

    sec, net_sec, ref_sec, sec128 = s["seconds"], net["seconds"], ref["seconds"], s128["seconds"]
    compute, net_compute = total(sec), total(net_sec)
    tre = s["tre_after_mm"]
    lines = [
        "# Whole registration on a 512×512×130 CT pair (benchmarks/bench_register.py)",
        "",
        f"Real chest CT resampled to 512×512×130 at 0.7×0.7×2.5 mm and a simulated exhale (15 mm diaphragm motion), "
        f"100 exact landmark pairs; {args.threads} threads; one run ({platform.machine()}). Model: "
        f"`{Path(s['model']).name}` ({s['grid']['network_size']}³ network grid). Transform grid "
        f"{'×'.join(map(str, s['grid']['transform_size']))} with refinement, "
        f"{'×'.join(map(str, net['grid']['transform_size']))} without.",
        "",
        "Columns: the default registration (network + refinement, levels "
        f"{', '.join(str(lv['spacing_mm'][0]) for lv in s['refinement']['levels'])} mm); the network alone "
        "(`--no-refine`); the same on the reference paths (`PROGREG_NUMBA=0`: torch / ITK instead of the compiled "
        "kernels); the paper-size network at 128³ (untrained, network alone). All in the same run.",
        "",
        "| stage | network + refinement, s | network alone, s | network alone, reference paths, s | "
        "paper-size network (128³), s |",
        "|---|---|---|---|---|",
    ]
    stages = list(dict.fromkeys([*sec, *net_sec]))
    lines += [f"| {k} | {sec.get(k, float('nan')):.2f} | {net_sec.get(k, float('nan')):.2f} | "
              f"{ref_sec.get(k, float('nan')):.2f} | {sec128.get(k, float('nan')):.2f} |" for k in stages]
    lines += [
        f"| **registration (all stages but writing)** | **{compute:.2f}** | **{net_compute:.2f}** | {total(ref_sec):.2f} | "
        f"{total(sec128):.2f} |",
        f"| process wall time incl. Python/torch start-up, reading and writing the files | {wall:.2f} | {net_wall:.2f} | | |",
        f"| peak memory (max RSS), GiB | {peak:.2f} | {net_peak:.2f} | | {peak128:.2f} |",
        "",
        f"Refinement / network alone: {compute / net_compute:.1f}× the registration time. Compiled kernels against the "
        f"reference paths: {total(ref_sec) / net_compute:.2f}× faster. Paper-size network at 128³: registration "
        f"{total(sec128) / sec128['network']:.1f}× its forward pass.",
        "",
        "| method | seconds | TRE after (mm) | max (mm) | folding (% of body voxels) |",
        "|---|---|---|---|---|",
        f"| ProgressiveRegistration, network alone | {net_compute:.1f} | {net['tre_after_mm']['mean']:.2f} ± "
        f"{net['tre_after_mm']['sd']:.2f} | {net['tre_after_mm']['max']:.2f} | {net['folding_percent']:.3f} |",
        f"| ProgressiveRegistration, network + refinement (default) | {compute:.1f} | {tre['mean']:.2f} ± "
        f"{tre['sd']:.2f} | {tre['max']:.2f} | {s['folding_percent']:.3f} |",
    ]
    if el:
        seconds, el_tre, before = el
        lines += [
            f"| elastix B-spline (itk-elastix, 4 levels, MI, 10 mm grid, 500 it.) | {seconds:.1f} | "
            f"{el_tre['mean']:.2f} ± {el_tre['sd']:.2f} | {el_tre['max']:.2f} | |",
            "",
            f"TRE before registration {before:.2f} mm. Time ratio elastix / ours with refinement: "
            f"**{seconds / compute:.1f}×** (target ≥ 8×); elastix / network alone: {seconds / net_compute:.0f}×.",
        ]
    lines += ["", f"Whole `progreg register` with refinement, process wall time: **{wall:.1f} s** (target ≤ 25 s)."]
    if pairs:
        lines += [
            "",
            "## The refinement on other pairs (in-process, the bundled model, default refinement)",
            "",
            "| pair | TRE before (mm) | network alone (mm) | refined (mm) | refined / network | folding (%) | "
            "refinement, s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {p['name']} | {p['before']:.2f} | {p['network']:.2f} | {p['refined']:.2f} | "
                  f"{p['refined'] / p['network']:.2f} | {p['folding']:.3f} | {p['refine_s']:.1f} |" for p in pairs]
        phantoms = [p for p in pairs if p["name"].startswith("breathing-phantom")]
        if phantoms:
            ratios = np.array([p["refined"] / p["network"] for p in phantoms])
            lines += ["", f"Held-out phantom breathing pairs ({len(phantoms)}): network "
                          f"{np.mean([p['network'] for p in phantoms]):.2f} mm → refined "
                          f"{np.mean([p['refined'] for p in phantoms]):.2f} mm; refined / network per pair "
                          f"{ratios.min():.2f}–{ratios.max():.2f} (target ≤ 0.5 on every pair); "
                          f"largest folding {max(p['folding'] for p in phantoms):.3f} %."]
    if clinical:
        lines += ["", *clinical_table(clinical, args.threads)]
    flags = "".join(f" {f}" for f, on in (("--skip-elastix", args.skip_elastix), ("--skip-pairs", args.skip_pairs),
                                          ("--skip-clinical", args.skip_clinical)) if on)
    flags += "".join(f" --clinical-case {c}" for c in args.clinical_case or ())
    lines += ["", f"Command: `python benchmarks/bench_register.py --threads {args.threads}{flags}`"]
    publish(lines, "register.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
