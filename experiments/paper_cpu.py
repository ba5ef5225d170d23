"""The paper's experiments at CPU scale: progressive versus baseline (Table II, Fig. 5, 6),
the schedule ablations (Table IV) and several initialisations (Sec. III-E).

Every arm trains on the same generated pairs (same seed) for the same number of
iterations; "both" runs train the progressive and baseline networks side by side from the
same initial weights, as the paper does. Evaluation uses pairs never seen in training:

* breathing pairs of held-out phantoms (exact landmarks at vessel bifurcations), and
* synthetic deformations (the paper's T2 distribution) of held-out real CT,

reporting mean ± SD TRE, folding inside the body, and a one-sided Wilcoxon signed-rank
test over image pairs (the paper's W = 153 is over 17 pairs).

    python experiments/paper_cpu.py --out experiments/runs            # all arms, then evaluate
    python experiments/paper_cpu.py --out experiments/runs --evaluate-only
    python experiments/paper_cpu.py --out /tmp/x --micro               # a two-minute check of the machinery

Interrupted runs resume (each arm continues from its checkpoint). Results:
OUT/results.json, OUT/*.png and docs/RESULTS.md (unless --micro).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

SCALE = {  # the CPU scale: 32³, 4 levels, the paper's schedule divided by 8
    "synthesis.size": 32, "network.levels": 4, "network.base_channels": 16, "schedule.delta": 250,
    "schedule.Delta": 750, "train.iterations": 6000, "train.snapshot_every": 100, "train.workers": 1,
    "train.threads": 1, "train.validation_pairs": 4,
}
MICRO = {"train.iterations": 24, "train.snapshot_every": 12, "schedule.delta": 4, "schedule.Delta": 12,
         "network.base_channels": 4}
TRAIN_IMAGES = ["phantom:0-29"]
VALIDATION_IMAGES = ["phantom:150-151"]
REAL_CT = ROOT.parent / "shared" / "data" / "ct"
HELD_OUT_REAL = ["elastix_lung/3DCT_lung_baseline_small.mha", "totalsegmentator/chest_crop_pulmonary.nii.gz"]


def arms(seeds=(0, 1, 2)) -> dict[str, list[str]]:
    """Run name -> overrides. 'both' runs give a progressive and a baseline network each."""
    runs = {f"init{s}": ["train.mode=both", f"train.seed={s}"] for s in seeds}
    runs["delta0_Delta500"] = ["train.mode=progressive", "train.seed=0", "schedule.delta=0", "schedule.Delta=500"]
    runs["delta500_Delta1500"] = ["train.mode=progressive", "train.seed=0", "schedule.delta=500", "schedule.Delta=1500"]
    return runs


def train_all(out: Path, micro: bool) -> None:
    scale = {**SCALE, **(MICRO if micro else {})}
    base = [f"{k}={v}" for k, v in scale.items()]
    base += ["train.images=" + json.dumps(TRAIN_IMAGES), "train.validation_images=" + json.dumps(VALIDATION_IMAGES)]
    for name, extra in arms((0,) if micro else (0, 1, 2)).items():
        run = out / name
        if (run / "model.pt").exists():
            print(f"[{name}] done already", flush=True)
            continue
        if micro and name.startswith("delta500"):
            continue
        args = [sys.executable, str(ROOT / "ProgressiveRegistration/Scripts/train.py"), "--out", str(run), "--quiet"]
        if (run / "checkpoint.pt").exists():
            args.append("--resume")
        overrides = base + extra
        if micro and "schedule.delta=0" in extra:
            overrides = [o for o in overrides if not o.startswith("schedule.Delta")] + ["schedule.Delta=12"]
        t0 = time.time()
        print(f"[{name}] training: {' '.join(extra)}", flush=True)
        r = subprocess.run(args + ["--set", *overrides], capture_output=True, text=True)
        status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
        (run / "status.txt").parent.mkdir(parents=True, exist_ok=True)
        (run / "status.txt").write_text(status + "\n")
        print(f"[{name}] {status} in {time.time() - t0:.0f} s", flush=True)


def evaluation_pairs(micro: bool):
    """Held-out breathing pairs of phantoms and synthetic deformations of held-out real CT."""
    import SimpleITK as sitk
    import torch

    from ProgressiveRegistrationLib.breathing import simulate
    from ProgressiveRegistrationLib.config import SynthesisConfig
    from ProgressiveRegistrationLib.geometry import Grid
    from ProgressiveRegistrationLib.phantom import generate
    from ProgressiveRegistrationLib.synthesis import pair_generator, random_transform
    from ProgressiveRegistrationLib.transforms import displacement_image

    pairs = []
    for seed in range(200, 202 if micro else 217):  # 17 breathing pairs, like the paper's 17 image pairs
        ph = generate(seed)
        amplitude = 12.0 + (seed % 5) * 3.0
        bp = simulate(ph.image, seed=seed, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3,
                      fixed_landmarks_lps=ph.bifurcations_lps)
        pairs.append({"name": f"breathing-phantom-{seed}", "kind": "breathing", "fixed": bp.inhale, "moving": bp.exhale,
                      "fixed_lps": bp.fixed_points_lps, "moving_lps": bp.moving_points_lps})
    for k, rel in enumerate(HELD_OUT_REAL[: 1 if micro else None]):
        path = REAL_CT / rel
        if not path.is_file():
            continue
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        grid = Grid.from_image(image)
        # φ: a T2-distributed field (Table I ranges, in voxels of a 64³ grid over the image).
        u64 = random_transform(SynthesisConfig().t2, 64, pair_generator(99, k))
        size = image.GetSize()
        u = torch.nn.functional.interpolate(u64[None], size=size[::-1], mode="trilinear", align_corners=True)[0]
        mm_per_vox64 = torch.tensor([(n - 1) * s / 63.0 for n, s in zip(size, image.GetSpacing())])
        disp_mm = (u * mm_per_vox64[:, None, None, None]).movedim(0, -1).numpy()
        tx = sitk.DisplacementFieldTransform(sitk.Cast(displacement_image(disp_mm, grid), sitk.sitkVectorFloat64))
        # fixed(x) = moving(φ(x)) with moving = the CT itself: φ is exactly the answer.
        fixed = sitk.Resample(image, image, tx, sitk.sitkLinear, -1024.0)
        rng = np.random.default_rng(k)
        edges = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(fixed, 1.5))
        cand = np.argwhere(edges > np.percentile(edges, 97))[:, ::-1]
        chosen = cand[rng.choice(len(cand), size=min(100, len(cand)), replace=False)].astype(float)
        f_lps = grid.points_to_lps(chosen)
        m_lps = np.array([tx.TransformPoint(p.tolist()) for p in f_lps])
        pairs.append({"name": f"synthetic-{Path(rel).name}", "kind": "synthetic", "fixed": fixed, "moving": image,
                      "fixed_lps": f_lps, "moving_lps": m_lps})
    return pairs


def evaluate(out: Path, micro: bool) -> dict:
    from ProgressiveRegistrationLib.landmarks import summary
    from ProgressiveRegistrationLib.registration import load_model, register_images

    pairs = evaluation_pairs(micro)
    models = {}
    for run in sorted(p for p in out.iterdir() if (p / "model.pt").exists()):
        arm = "progressive" if (run / "model_baseline.pt").exists() else json.loads(
            (run / "config.json").read_text())["train"]["mode"]
        models[f"{run.name}/{arm}"] = run / "model.pt"
        if (run / "model_baseline.pt").exists():
            models[f"{run.name}/baseline"] = run / "model_baseline.pt"
    results = {"pairs": [p["name"] for p in pairs], "models": {}}
    before = [float(np.linalg.norm(p["fixed_lps"] - p["moving_lps"], axis=1).mean()) for p in pairs]
    results["before_mm"] = before
    for name, path in models.items():
        model = load_model(path)
        per_pair, folding, all_tre = [], [], []
        for p in pairs:
            r = register_images(p["fixed"], p["moving"], model, "cpu", p["fixed_lps"], p["moving_lps"], warp_moving=False)
            per_pair.append(float(r.landmarks["after_mm"].mean()))
            all_tre.append(r.landmarks["after_mm"])
            folding.append(r.folding_percent)
        results["models"][name] = {"per_pair_mm": per_pair, "folding_percent": folding,
                                   "tre_mm": summary(np.concatenate(all_tre)),
                                   "folding": summary(np.array(folding))}
        print(f"{name}: TRE {results['models'][name]['tre_mm']['mean']:.2f} mm, folding "
              f"{np.mean(folding):.3f} %", flush=True)
    results["wilcoxon"] = {}
    from scipy.stats import wilcoxon

    for key in results["models"]:
        if key.endswith("/progressive"):
            b = key.replace("/progressive", "/baseline")
            if b in results["models"]:
                p, q = np.array(results["models"][key]["per_pair_mm"]), np.array(results["models"][b]["per_pair_mm"])
                if np.any(p != q):
                    w = wilcoxon(p, q, alternative="less")
                    results["wilcoxon"][key.split("/")[0]] = {"W": float(w.statistic), "p": float(w.pvalue), "n": len(p)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def write_report(results: dict, out: Path, path: Path) -> None:
    """Tables and a per-pair figure; the reading of the numbers is written by hand below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = np.array(results["before_mm"])
    lines = ["# Paper experiments at CPU scale (experiments/paper_cpu.py)", "",
             f"Scale: {json.dumps(SCALE)}; training images {TRAIN_IMAGES}; evaluation on {len(before)} held-out pairs "
             f"({', '.join(results['pairs'])}).", "",
             f"TRE before registration, mean over pairs: {before.mean():.2f} mm.", "",
             "| network | TRE (mm, all landmarks) | mean of per-pair TRE (mm) | folding % (mean ± SD over pairs) |",
             "|---|---|---|---|"]
    for name, m in results["models"].items():
        t, f = m["tre_mm"], m["folding"]
        lines.append(f"| {name} | {t['mean']:.2f} ± {t['sd']:.2f} | {np.mean(m['per_pair_mm']):.2f} | "
                     f"{f['mean']:.3f} ± {f['sd']:.3f} |")
    lines += ["", "One-sided Wilcoxon signed-rank test over image pairs (progressive < baseline):", "",
              "| initialisation | W | p | pairs |", "|---|---|---|---|"]
    for name, w in results["wilcoxon"].items():
        lines.append(f"| {name} | {w['W']:.0f} | {w['p']:.4f} | {w['n']} |")
    fig, ax = plt.subplots(figsize=(5, 5))
    for key, m in results["models"].items():
        if key.endswith("/progressive") and key.replace("/progressive", "/baseline") in results["models"]:
            b = results["models"][key.replace("/progressive", "/baseline")]["per_pair_mm"]
            ax.scatter(b, m["per_pair_mm"], s=14, label=key.split("/")[0])
    hi = max([max(m["per_pair_mm"]) for m in results["models"].values()] + [1.0]) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlabel("baseline TRE per pair (mm)")
    ax.set_ylabel("progressive TRE per pair (mm)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_pair.png", dpi=90)
    plt.close(fig)
    figure = out / "per_pair.png"
    shown = figure.relative_to(path.parent) if figure.is_relative_to(path.parent) else figure
    lines += ["", f"![per pair]({shown})",
              "", "Command: `python experiments/paper_cpu.py --out experiments/runs`"]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--micro", action="store_true", help="tiny settings: checks the machinery in minutes")
    ap.add_argument("--evaluate-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        train_all(out, args.micro)
    results = evaluate(out, args.micro)
    write_report(results, out, out / "RESULTS.md" if args.micro else ROOT / "docs" / "RESULTS.md")
    print(json.dumps({k: v["tre_mm"] for k, v in results["models"].items()}, indent=1))
    print(json.dumps(results["wilcoxon"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
