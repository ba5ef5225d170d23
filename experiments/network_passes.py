"""The network applied once or again (a cascade): each model's one-pass error, and what the
refinement makes of it, on the large-motion benchmark's pairs.

A cascade registers the fixed crop to the moving crop warped by the field so far and composes
the fields exactly (``registration.engine.network_field``). It can only help where the network
stays still on a nearly aligned pair: a second pass that moves an aligned region by millimetres
undoes what the first got right. Per model and number of passes: the network alone and network +
refinement (mean, max over 300 landmarks inside the lungs), on the bundled CT and a real full chest
at ordinary, deep and COPD-scale motion (``benchmarks/bench_large_motion.py``'s pairs).

    python experiments/network_passes.py --model shipped=ProgressiveRegistration/Resources/Models/progreg_cpu64.pt \\
        --model cpu_v3=runs/cpu-v3/model.pt --passes 1,2,3 --out experiments/results/network_passes.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_large_motion import AMPLITUDES, CASES, cases  # noqa: E402

from ProgressiveRegistrationLib.core.atomic import write_text  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import load_model  # noqa: E402
from ProgressiveRegistrationLib.registration.engine import register_images  # noqa: E402
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT  # noqa: E402


def evaluate(models: dict[str, str], passes: list[int], names: list[str]) -> list[dict]:
    loaded = {name: load_model(path) for name, path in models.items()}
    rows = []
    for case, amplitude, pair, interior in cases(names, list(AMPLITUDES)):
        for name, model in loaded.items():
            for k in passes:
                r = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps,
                                    pair.moving_points_lps, refinement=DEFAULT, warp_moving=False, network_passes=k)
                net, refined = r.landmarks["network_mm"][interior], r.landmarks["after_mm"][interior]
                row = {"case": case, "amplitude_mm": amplitude, "model": name, "passes": k,
                       "before_mm": float(r.landmarks["before_mm"][interior].mean()),
                       "network_mean_mm": float(net.mean()), "network_max_mm": float(net.max()),
                       "refined_mean_mm": float(refined.mean()), "refined_sd_mm": float(refined.std()),
                       "refined_max_mm": float(refined.max()), "network_s": r.seconds["network"]}
                rows.append(row)
                print(f"{case} {amplitude:g} mm {name} x{k}: network {row['network_mean_mm']:.2f} "
                      f"(max {row['network_max_mm']:.2f}), refined {row['refined_mean_mm']:.3f} "
                      f"(max {row['refined_max_mm']:.2f})", file=sys.stderr, flush=True)
    return rows


def page(rows: list[dict], models: dict[str, str], threads: int) -> str:
    lines = ["# The network once or again (experiments/network_passes.py)", "",
             "TRE (mm) over 300 landmarks inside the lungs of each pair of `benchmarks/bench_large_motion.py` "
             "(the breathing simulator's exact landmarks; diaphragm amplitude in the first column). `passes`: the "
             "network applied that many times, each pass to the moving crop warped by the fields before "
             f"(composed exactly); then the default refinement. {threads} threads, {platform.machine()}.", "",
             "Models: " + ", ".join(f"`{n}` = `{Path(p).name}`" for n, p in models.items()) + ".", "",
             "| pair | TRE before | model | passes | network alone: mean | max | + refinement: mean ± SD | max | "
             "network, s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = f"{CASES[r['case']].split(',')[0]}, {AMPLITUDES[r['amplitude_mm']]} ({r['amplitude_mm']:g} mm)"
        lines.append(f"| {label} | {r['before_mm']:.2f} | {r['model']} | {r['passes']} | {r['network_mean_mm']:.2f} | "
                     f"{r['network_max_mm']:.2f} | {r['refined_mean_mm']:.3f} ± {r['refined_sd_mm']:.3f} | "
                     f"{r['refined_max_mm']:.2f} | {r['network_s']:.2f} |")
    lines += ["", "| model | passes | network alone: mean of the pairs' means | worst landmark | "
                  "+ refinement: mean | worst landmark |", "|---|---|---|---|---|---|"]
    for name in models:
        for k in sorted({r["passes"] for r in rows}):
            sel = [r for r in rows if r["model"] == name and r["passes"] == k]
            lines.append(f"| {name} | {k} | {np.mean([r['network_mean_mm'] for r in sel]):.2f} | "
                         f"{max(r['network_max_mm'] for r in sel):.2f} | "
                         f"{np.mean([r['refined_mean_mm'] for r in sel]):.3f} | "
                         f"{max(r['refined_max_mm'] for r in sel):.2f} |")
    command = " ".join(["python experiments/network_passes.py", *(f"--model {n}={p}" for n, p in models.items()),
                        "--passes " + ",".join(str(k) for k in sorted({r['passes'] for r in rows}))])
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=FILE", help="a model file to evaluate")
    ap.add_argument("--passes", default="1,2,3", help="numbers of network passes (default 1,2,3)")
    ap.add_argument("--cases", default="small,full")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "network_passes.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = dict(m.split("=", 1) for m in args.model)
    rows = evaluate(models, [int(k) for k in args.passes.split(",")], args.cases.split(","))
    write_text(args.out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
    write_text(args.out, page(rows, models, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
