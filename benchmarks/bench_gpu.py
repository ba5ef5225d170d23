"""The register benchmark's cases on CUDA: the network, the refinement and the whole
`progreg register`, with peak GPU memory, and the CPU's TRE beside it (the same code on
another device must give the same accuracy).

Cases, as in ``bench_register.py``: the 512×512×130 pair (a real chest CT resampled to
0.7×0.7×2.5 mm and a simulated exhale, 100 exact landmarks), the clinical-size phantom pairs
(512×512×130 at 0.98×0.98×2 mm and the same anatomy at 1.37×1.37×2.5 mm), and, unless
``--skip-pairs``, the demo pair and the held-out phantom breathing pairs.

Per case, in-process (``register_images``, after one warm-up registration that initialises
CUDA and compiles the CPU kernels): the network and refinement seconds on CUDA, the peak GPU
memory of the registration (``torch.cuda.max_memory_allocated``), the refined TRE on CUDA and
on the CPU. Then the whole command on the large pair in a new process (``register_files``
with ``device="cuda"``, as `progreg register --device cuda` runs): process wall time and its
peak GPU memory.

    python benchmarks/bench_gpu.py [--skip-pairs] [--skip-cpu] [--threads 16]

Writes benchmarks/results/gpu.md. Without a CUDA device it says so and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402


def cases(skip_pairs: bool) -> list[tuple[str, sitk.Image, sitk.Image, np.ndarray, np.ndarray]]:
    """(name, fixed, moving, fixed landmarks LPS, moving landmarks LPS) of the register benchmark."""
    from bench_register import SAMPLE, clinical_pairs, denser_exhale, full_fov_ct

    from ProgressiveRegistrationLib.simulation.breathing import simulate

    big = simulate(full_fov_ct(), seed=0, amplitude_si_mm=15.0, amplitude_ap_mm=5.0, n_landmarks=100)
    out = [("512×512×130 chest CT pair, 0.7×0.7×2.5 mm", big.inhale, big.exhale, big.fixed_points_lps,
            big.moving_points_lps)]
    out += [(c["name"], c["fixed"], c["moving"], c["fixed_lps"], c["moving_lps"]) for c in clinical_pairs()]
    if not skip_pairs:
        sys.path.insert(0, str(ROOT / "experiments"))
        from paper_cpu import evaluation_pairs

        demo = simulate(sitk.ReadImage(str(SAMPLE)), seed=0)
        dense, dense_exhale = denser_exhale()
        out += [("demo pair (bundled CT, simulated exhale)", demo.inhale, demo.exhale, demo.fixed_points_lps,
                 demo.moving_points_lps),
                ("bundled CT, exhale with lungs 5 % denser", dense.inhale, dense_exhale, dense.fixed_points_lps,
                 dense.moving_points_lps)]
        out += [(p["name"], p["fixed"], p["moving"], p["fixed_lps"], p["moving_lps"])
                for p in evaluation_pairs(micro=False) if p["kind"] == "breathing"]
    return out


def run_case(model, device: str, fixed, moving, f_lps, m_lps) -> dict:
    """One registration (network + default refinement) on ``device``: seconds, TRE, peak GPU memory."""
    import torch

    from ProgressiveRegistrationLib.registration.engine import register_images
    from ProgressiveRegistrationLib.registration.refine_config import RefineConfig

    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = register_images(fixed, moving, model, device, f_lps, m_lps, warp_moving=False, refinement=RefineConfig())
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else float("nan")
    return {"network_s": r.seconds["network"], "refine_s": r.seconds["refine"], "wall_s": wall, "peak_gib": peak,
            "network_mm": float(r.landmarks["network_mm"].mean()), "refined_mm": float(r.landmarks["after_mm"].mean()),
            "folding": r.folding_percent, "levels": r.refinement}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--skip-pairs", action="store_true", help="only the large and the clinical-size pairs")
    ap.add_argument("--skip-cpu", action="store_true", help="no CPU registrations beside the CUDA ones")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no GPU is present here (torch sees no CUDA device): nothing measured, no table written")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_register import make_pair, run_ours

    from ProgressiveRegistrationLib.model.modelfile import load_model
    from ProgressiveRegistrationLib.registration.refine_config import DEFAULT

    gpu_model, cpu_model = load_model(None, "cuda"), load_model(None, "cpu")
    todo = cases(args.skip_pairs)
    run_case(gpu_model, "cuda", *todo[-1][1:])  # warm-up: CUDA context, cuDNN, the compiled CPU kernels
    rows = []
    for name, fixed, moving, f_lps, m_lps in todo:
        gpu = run_case(gpu_model, "cuda", fixed, moving, f_lps, m_lps)
        cpu = None if args.skip_cpu else run_case(cpu_model, "cpu", fixed, moving, f_lps, m_lps)
        rows.append((name, fixed.GetSize(), gpu, cpu))
        print(f"{name}: cuda {gpu['refine_s']:.2f} s refine, {gpu['refined_mm']:.3f} mm"
              + (f"; cpu {cpu['refine_s']:.2f} s, {cpu['refined_mm']:.3f} mm" if cpu else ""), file=sys.stderr,
              flush=True)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        paths = make_pair(d)
        run_ours(paths, d / "warmup", torch.get_num_threads(), device="cuda")
        whole, whole_wall, _ = run_ours(paths, d / "ours", torch.get_num_threads(), device="cuda")

    name = torch.cuda.get_device_name(0)
    lines = [
        "# The register benchmark's cases on CUDA (benchmarks/bench_gpu.py)",
        "",
        f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; CPU side: {torch.get_num_threads()} threads "
        f"({platform.machine()}). Bundled model, default refinement (network + refinement, levels "
        f"{', '.join(f'{s:g}' for s in DEFAULT.levels_mm)} mm). "
        "In-process `register_images`, one run each after a warm-up; the transform, Jacobian and landmark "
        "stages stay on the CPU's compiled kernels. Peak GPU memory: `torch.cuda.max_memory_allocated` over "
        "the registration.",
        "",
        "| case | size | network, s | refinement, s | registration, s | peak GPU memory, GiB | TRE network (mm) | "
        "TRE refined, CUDA (mm) | TRE refined, CPU (mm) | refinement on the CPU, s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, gpu, cpu in rows:
        lines.append(f"| {name} | {'×'.join(map(str, size))} | {gpu['network_s']:.2f} | {gpu['refine_s']:.2f} | "
                     f"{gpu['wall_s']:.2f} | {gpu['peak_gib']:.2f} | {gpu['network_mm']:.2f} | {gpu['refined_mm']:.3f} | "
                     + (f"{cpu['refined_mm']:.3f} | {cpu['refine_s']:.2f} |" if cpu else " | |"))
    lines += ["", "Refinement levels on CUDA (grid, seconds, ns per voxel and iteration):", "",
              "| case | level | spacing (mm) | grid | iterations | seconds | ns / (voxel · iteration) |",
              "|---|---|---|---|---|---|---|"]
    for name, _, gpu, _ in rows:
        for k, lv in enumerate(gpu["levels"]):
            if not lv.get("iterations"):
                continue
            voxels = int(np.prod(lv["size"]))
            lines.append(f"| {name} | {k + 1} | {'×'.join(f'{s:g}' for s in lv['spacing_mm'])} | "
                         f"{'×'.join(map(str, lv['size']))} | {lv['iterations']} | {lv['seconds']:.2f} | "
                         f"{1e9 * lv['seconds'] / (voxels * lv['iterations']):.1f} |")
    sec = whole["seconds"]
    lines += ["", f"Whole `progreg register --device cuda` on the 512×512×130 pair (new process, landmarks, all "
                  f"outputs): process wall time **{whole_wall:.1f} s**, registration (all stages but writing) "
                  f"{sum(v for k, v in sec.items() if k != 'write'):.2f} s (network {sec['network']:.2f} s, refinement "
                  f"{sec['refine']:.2f} s), peak GPU memory {whole['peak_gpu_gib']:.2f} GiB, TRE "
                  f"{whole['tre_after_mm']['mean']:.2f} mm, device `{whole['device']}`."]
    flags = "".join(f" {f}" for f, on in (("--skip-pairs", args.skip_pairs), ("--skip-cpu", args.skip_cpu)) if on)
    lines += ["", f"Command: `python benchmarks/bench_gpu.py{flags}`"]
    publish(lines, "gpu.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
