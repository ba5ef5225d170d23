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
OUT/results.json, OUT/*.png and experiments/RESULTS.md (unless --micro).
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

SCALE = {  # the CPU scale: 32³, 4 levels (16…128 channels), the paper's schedule divided by 16
    "synthesis.size": 32, "network.levels": 4, "network.base_channels": 16, "schedule.delta": 125,
    "schedule.Delta": 375, "train.iterations": 1500, "train.snapshot_every": 50, "train.workers": 1,
    "train.threads": 1, "train.validation_pairs": 4,
}
MICRO = {"train.iterations": 24, "train.snapshot_every": 12, "schedule.delta": 4, "schedule.Delta": 12,
         "network.base_channels": 4}
TRAIN_IMAGES = ["phantom:0-29"]
VALIDATION_IMAGES = ["phantom:150-151"]
REAL_CT = ROOT.parent / "shared" / "data" / "ct"
HELD_OUT_REAL = ["elastix_lung/3DCT_lung_baseline_small.mha", "totalsegmentator/chest_crop_pulmonary.nii.gz"]


def arms(seeds=(0, 1, 2)) -> dict[str, list[str]]:
    """Run name -> overrides. 'both' runs give a progressive and a baseline network each.

    The ablations are the paper's Table IV settings divided by 16 like the main schedule:
    δ = 0, Δ = 4000 (no transitions) and δ = 2000, Δ = 4000 (shorter plateaus).
    """
    runs = {f"init{s}": ["train.mode=both", f"train.seed={s}"] for s in seeds}
    runs["delta0_Delta250"] = ["train.mode=progressive", "train.seed=0", "schedule.delta=0", "schedule.Delta=250"]
    runs["delta125_Delta250"] = ["train.mode=progressive", "train.seed=0", "schedule.delta=125", "schedule.Delta=250"]
    return runs


def train_all(out: Path, micro: bool, jobs: int = 1) -> None:
    """Train every arm not finished yet, ``jobs`` processes at a time (one thread each)."""
    scale = {**SCALE, **(MICRO if micro else {})}
    base = [f"{k}={v}" for k, v in scale.items()]
    base += ["train.images=" + json.dumps(TRAIN_IMAGES), "train.validation_images=" + json.dumps(VALIDATION_IMAGES)]
    pending = []
    for name, extra in arms((0,) if micro else (0, 1, 2)).items():
        run = out / name
        if (run / "model.pt").exists():
            print(f"[{name}] done already", flush=True)
            continue
        if micro and name.startswith("delta125"):
            continue
        args = [sys.executable, str(ROOT / "ProgressiveRegistration/Scripts/train.py"), "--out", str(run), "--quiet"]
        if (run / "checkpoint.pt").exists():
            args.append("--resume")
        overrides = base + extra
        if micro and "schedule.delta=0" in extra:
            overrides = [o for o in overrides if not o.startswith("schedule.Delta")] + ["schedule.Delta=12"]
        pending.append((name, run, args + ["--set", *overrides], " ".join(extra)))
    running: list[tuple[str, Path, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < jobs:
            name, run, args, what = pending.pop(0)
            run.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] training: {what}", flush=True)
            err = open(run / "stderr.txt", "w", encoding="utf-8")  # noqa: SIM115 (closed with the process below)
            running.append((name, run, subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err), time.time()))
        time.sleep(2)
        for item in list(running):
            name, run, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            lines = (run / "stderr.txt").read_text(encoding="utf-8").strip().splitlines()
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {lines[-1] if lines else ''}"
            (run / "status.txt").write_text(status + "\n", encoding="utf-8")
            print(f"[{name}] {status} in {time.time() - t0:.0f} s", flush=True)


def evaluation_pairs(micro: bool):
    """Held-out breathing pairs of phantoms and synthetic deformations of held-out real CT."""
    import SimpleITK as sitk
    import torch

    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.core.transforms import displacement_image, field_transform
    from ProgressiveRegistrationLib.model.config import SynthesisConfig
    from ProgressiveRegistrationLib.registration.evaluation import PointPair
    from ProgressiveRegistrationLib.simulation.breathing import simulate
    from ProgressiveRegistrationLib.simulation.phantom import generate
    from ProgressiveRegistrationLib.training.synthesis import pair_generator, random_transform

    pairs = []
    for seed in range(200, 202 if micro else 217):  # 17 breathing pairs, like the paper's 17 image pairs
        ph = generate(seed)
        amplitude = 12.0 + (seed % 5) * 3.0
        bp = simulate(ph.image, seed=seed, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3,
                      fixed_landmarks_lps=ph.bifurcations_lps)
        pairs.append(PointPair(f"breathing-phantom-{seed}", bp.inhale, bp.exhale, bp.fixed_points_lps,
                               bp.moving_points_lps, "breathing"))
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
        tx = field_transform(displacement_image(disp_mm, grid))
        # fixed(x) = moving(φ(x)) with moving = the CT itself: φ is exactly the answer.
        fixed = sitk.Resample(image, image, tx, sitk.sitkLinear, -1024.0)
        rng = np.random.default_rng(k)
        edges = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(fixed, 1.5))
        cand = np.argwhere(edges > np.percentile(edges, 97))[:, ::-1]
        chosen = cand[rng.choice(len(cand), size=min(100, len(cand)), replace=False)].astype(float)
        f_lps = grid.points_to_lps(chosen)
        m_lps = np.array([tx.TransformPoint(p.tolist()) for p in f_lps])
        pairs.append(PointPair(f"synthetic-{Path(rel).name}", fixed, image, f_lps, m_lps, "synthetic"))
    return pairs


def _models(out: Path) -> dict[str, tuple[Path, Path]]:
    """'<run>/<arm>' -> (exported model file, its evaluation cache), for every finished run,
    and the shipped model for reference (trained differently: see its model card)."""
    from ProgressiveRegistrationLib.io.resources import BUNDLED_MODEL as DEFAULT_MODEL

    models = {}
    for run in sorted(p for p in out.iterdir() if (p / "model.pt").exists()):
        if (run / "model_baseline.pt").exists():
            arms = {"progressive": run / "model.pt", "baseline": run / "model_baseline.pt"}
        else:
            arms = {json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]["mode"]: run / "model.pt"}
        for arm, path in arms.items():
            models[f"{run.name}/{arm}"] = (path, path.with_name(f"eval_{path.stem}.json"))
    models[f"shipped/{DEFAULT_MODEL.stem}"] = (DEFAULT_MODEL, out / "shipped" / f"eval_{DEFAULT_MODEL.stem}.json")
    return models


def _read_log(run: Path) -> list[dict[str, str]]:
    """The rows of a run's ``log.csv`` (one per snapshot), or [] if it has none yet."""
    import csv

    path = run / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _one_sided_wilcoxon(a: np.ndarray, b: np.ndarray) -> dict | None:
    """H1: a < b, over pairs. W is the sum of the ranks of |a − b| where a < b: the paper's
    W (153 = 17·18/2 means a < b for all of its 17 pairs). scipy's statistic for this
    alternative is the other rank sum, so W is computed here; the p-value is scipy's."""
    from scipy.stats import rankdata, wilcoxon

    d = a - b
    d = d[d != 0]
    if len(d) < 2:
        return None
    ranks = rankdata(np.abs(d))
    return {"W": float(ranks[d < 0].sum()), "p": float(wilcoxon(a, b, alternative="less").pvalue), "n": int(len(a))}


def file_sha256(path: Path) -> str | None:
    """The content's SHA-256 (hex), or None for a missing file."""
    import hashlib

    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def evaluate_model(path: Path, pairs: list, cache: Path) -> dict:
    """Per-pair landmark TRE (mm) and folding (%) of one network on ``pairs`` (``PointPair``),
    cached in ``cache`` (one file per network and evaluation set, so that finished arms are
    evaluated while others train). The cache is used only for the same pairs and the same
    model file (by content: a retrained model under the same name is evaluated again)."""
    from ProgressiveRegistrationLib.registration.evaluation import score_pairs

    names = [p.name for p in pairs]
    digest = file_sha256(path)
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["pairs"] == names and cached.get("model_sha256") == digest:
            return cached
    done = {"pairs": names, "model_sha256": digest, "after_mm": [], "folding_percent": []}
    for score in score_pairs(pairs, path):
        done["after_mm"].append(score.after_mm.tolist())
        done["folding_percent"].append(score.folding_percent)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(done), encoding="utf-8")
    return done


def model_summary(done: dict, kinds: list[str]) -> dict:
    """Mean TRE per pair, and TRE and folding summaries per kind of pair."""
    from ProgressiveRegistrationLib.core.metrics import summary

    folding = done["folding_percent"]
    tre = {"breathing": [], "synthetic": []}
    for kind, after in zip(kinds, done["after_mm"]):
        tre[kind].append(np.asarray(after))
    return {
        "per_pair_mm": [float(np.mean(a)) for a in done["after_mm"]], "folding_percent": folding,
        "tre_mm": {k: summary(np.concatenate(v)) for k, v in tre.items() if v},
        "folding": {k: summary(np.array([f for f, q in zip(folding, kinds) if q == k])) for k in tre if tre[k]},
    }


def evaluate(out: Path, micro: bool) -> dict:
    """Every finished network on every evaluation pair: TRE per pair, folding, Wilcoxon tests."""
    pairs = evaluation_pairs(micro)
    kinds = [p.kind for p in pairs]
    results = {"pairs": [p.name for p in pairs], "kinds": kinds, "models": {}, "runs": {}}
    results["before_mm"] = [float(np.linalg.norm(p.fixed_lps - p.moving_lps, axis=1).mean()) for p in pairs]
    for run in sorted(p for p in out.iterdir() if (p / "config.json").exists()):
        log = _read_log(run)
        last = log[-1] if log else {}
        status = (run / "status.txt").read_text(encoding="utf-8").strip() if (run / "status.txt").exists() else "not run"
        results["runs"][run.name] = {"status": status, "iterations": int(last.get("iteration", 0)),
                                     "seconds": float(last.get("seconds", 0.0))}
    for name, (path, cache) in _models(out).items():
        results["models"][name] = model_summary(evaluate_model(path, pairs, cache), kinds)
        m = results["models"][name]["tre_mm"]
        print(f"{name}: " + ", ".join(f"{k} TRE {v['mean']:.2f} mm" for k, v in m.items())
              + f", folding {np.mean(results['models'][name]['folding_percent']):.3f} %", flush=True)
    results["wilcoxon"] = {}
    for key, m in results["models"].items():
        base = key.replace("/progressive", "/baseline")
        if key.endswith("/progressive") and base in results["models"]:
            p, q = np.array(m["per_pair_mm"]), np.array(results["models"][base]["per_pair_mm"])
            for kind in ("breathing", "synthetic", "all"):
                sel = np.array([kind in ("all", k) for k in kinds])
                test = _one_sided_wilcoxon(p[sel], q[sel])
                if test:
                    results["wilcoxon"][f"{key.split('/')[0]}/{kind}"] = test
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return results


def _curves_figure(out: Path, path: Path) -> None:
    """Paper Fig. 5B/6 for every arm: validation error per snapshot, progressive solid, baseline dashed."""
    from ProgressiveRegistrationLib.registration.figures import pyplot as _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = sorted(p for p in out.iterdir() if (p / "log.csv").exists())
    for k, run in enumerate(runs):
        data = _read_log(run)
        head = data[0].keys() if data else ()
        its = [int(r["iteration"]) for r in data]
        config = run / "config.json"
        sched = json.loads(config.read_text(encoding="utf-8")).get("schedule", {}) if config.exists() else {}
        sched = {"delta": sched.get("delta", "?"), "Delta": sched.get("Delta", "?")}
        # Panel B compares schedules from seed 0: the ablations and init0's two arms.
        panels = [axes[0]] if run.name.startswith("init") else [axes[1]]
        panels += [axes[1]] if run.name == "init0" else []
        for ax in panels:
            for arm, style in (("progressive", "-"), ("baseline", "--")):
                if f"{arm}_val_mm" in head:
                    what = f" (δ = {sched['delta']}, Δ = {sched['Delta']})" if arm == "progressive" else ""
                    ax.plot(its, [float(r[f"{arm}_val_mm"]) for r in data], style, color=colours[k % 10], lw=1.2,
                            label=f"{run.name} {arm}{what}")
        if k == 0 and data:
            for a in axes:
                a.axhline(float(data[0]["identity_val_mm"]), color="grey", lw=0.8, ls=":", label="no registration")
    axes[0].set_title("A. Progressive (solid) vs baseline (dashed), three initialisations")
    axes[1].set_title("B. Schedule ablations (Table IV)")
    for a in axes:
        a.set_xlabel("iteration")
        a.legend(fontsize=7)
    axes[0].set_ylabel("validation end-point error (mm)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pairs_figure(results: dict, path: Path) -> None:
    """Per-pair TRE, progressive against baseline (each point one evaluation pair)."""
    from ProgressiveRegistrationLib.registration.figures import pyplot as _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    kinds = np.array(results["kinds"])
    for key, m in results["models"].items():
        base = key.replace("/progressive", "/baseline")
        if key.endswith("/progressive") and base in results["models"]:
            b, p = np.array(results["models"][base]["per_pair_mm"]), np.array(m["per_pair_mm"])
            sc = ax.scatter(b[kinds == "breathing"], p[kinds == "breathing"], s=16, label=f"{key.split('/')[0]} breathing")
            ax.scatter(b[kinds == "synthetic"], p[kinds == "synthetic"], s=40, marker="^", color=sc.get_facecolor(),
                       label=f"{key.split('/')[0]} synthetic real CT")
    hi = max([max(m["per_pair_mm"]) for m in results["models"].values()] + [1.0]) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("baseline: mean TRE of the pair (mm)")
    ax.set_ylabel("progressive: mean TRE of the pair (mm)")
    ax.set_title("Below the diagonal: progressive better")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


READING_MARK = "## Reading"


def write_report(results: dict, out: Path, path: Path, figures: Path) -> None:
    """Tables and figures; the hand-written reading below ``READING_MARK`` is kept on rewrite."""
    figures.mkdir(parents=True, exist_ok=True)
    _curves_figure(out, figures / "training_curves.png")
    _pairs_figure(results, figures / "per_pair.png")
    kinds = np.array(results["kinds"])
    before = np.array(results["before_mm"])
    n_b, n_s = int((kinds == "breathing").sum()), int((kinds == "synthetic").sum())

    def tre(m, kind):
        t = m["tre_mm"].get(kind)
        return f"{t['mean']:.2f} ± {t['sd']:.2f}" if t else "–"

    def fold(m, kind):
        f = m["folding"].get(kind)
        return f"{f['mean']:.3f}" if f else "–"

    rel = lambda f: f.relative_to(path.parent) if f.is_relative_to(path.parent) else f  # noqa: E731
    cpu_h = sum(r["seconds"] for r in results["runs"].values()) / 3600
    lines = ["# The paper's experiments at CPU scale", "",
             "Produced by `python experiments/paper_cpu.py --out experiments/runs` (training, then evaluation; "
             "`--evaluate-only` redoes the evaluation). Everything above *Reading* is written by that script; the "
             "reading is by hand and kept when the script rewrites the file.", "",
             "## Scale", "",
             f"- Network and schedule: {', '.join(f'`{k}={v}`' for k, v in SCALE.items())}; SGD lr 1e-2, momentum "
             "0.5, batch 1, the paper's Table I deformations (in voxels of the 32³ grid).",
             f"- Training images: {', '.join(TRAIN_IMAGES)} (generated thorax phantoms); validation during training "
             f"on synthetic pairs of {', '.join(VALIDATION_IMAGES)}.",
             "- Every arm trains on the same generated pairs for the same number of iterations; the `init*` runs "
             "train the progressive and the baseline network side by side from the same initial weights.",
             f"- Training cost, all arms: {cpu_h:.2f} CPU-hours (one thread per arm, two arms at a time).", "",
             "## Evaluation data (never used in training)", "",
             f"- {n_b} breathing pairs: held-out phantoms (seeds 200–{199 + n_b}), inhale to a simulated exhale "
             "(diaphragm-driven superior–inferior motion 12–24 mm, AP expansion, sliding), landmarks at vessel "
             "bifurcations with exact partners.",
             f"- {n_s} synthetic pairs of held-out real CT ({', '.join(Path(h).name for h in HELD_OUT_REAL)}): a "
             "T2-distributed field, 100 landmarks on edges.",
             f"- Mean TRE before registration: breathing {before[kinds == 'breathing'].mean():.2f} mm, synthetic "
             f"{before[kinds == 'synthetic'].mean():.2f} mm." if n_s else "", "",
             "## Progressive versus baseline (paper Table II, Sec. III-E)", "",
             "TRE over all landmarks of all pairs, mean ± SD (mm); folding: % of voxels with det J ≤ 0 inside "
             "the body, mean over pairs.", "",
             "| network | breathing TRE | synthetic TRE | breathing folding % | synthetic folding % |",
             "|---|---|---|---|---|"]
    for name, m in results["models"].items():
        lines.append(f"| {name} | {tre(m, 'breathing')} | {tre(m, 'synthetic')} | {fold(m, 'breathing')} | "
                     f"{fold(m, 'synthetic')} |")
    lines += ["", "One-sided Wilcoxon signed-rank test over image pairs, H1: progressive TRE < baseline TRE "
              "(W = sum of the ranks of the pairs where progressive is better; the paper's W = 153 is all 17 of its "
              "pairs):", "", "| initialisation | pairs | W | p | n |", "|---|---|---|---|---|"]
    for key, w in results["wilcoxon"].items():
        run, kind = key.split("/")
        lines.append(f"| {run} | {kind} | {w['W']:.0f} | {w['p']:.4f} | {w['n']} |")
    lines += ["", "## Schedule ablations (paper Table IV)", "",
              "| run | status | iterations | breathing TRE | synthetic TRE | breathing folding % | CPU time (min) |",
              "|---|---|---|---|---|---|---|"]
    for run, r in results["runs"].items():
        if run.startswith("init") and run != "init0":
            continue  # Table IV compares schedules from one initialisation
        ms = [(k, m) for k, m in results["models"].items() if k.startswith(run + "/")] or [(f"{run}/–", None)]
        for key, m in ms:
            cells = [tre(m, "breathing"), tre(m, "synthetic"), fold(m, "breathing")] if m else ["–", "–", "–"]
            lines.append(f"| {key} | {r['status']} | {r['iterations']} | {' | '.join(cells)} | {r['seconds'] / 60:.0f} |")
    lines += ["", f"![training curves]({rel(figures / 'training_curves.png')})", "",
              f"![per pair]({rel(figures / 'per_pair.png')})", ""]
    reading = ""
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    if READING_MARK in previous:
        reading = previous[previous.index(READING_MARK):]
    path.write_text("\n".join(lines) + "\n" + (reading or f"{READING_MARK}\n\n(to be written)\n"), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--micro", action="store_true", help="tiny settings: checks the machinery in minutes")
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="arms trained at once, one thread each (default 2)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        train_all(out, args.micro, args.jobs)
    results = evaluate(out, args.micro)
    if args.micro:
        write_report(results, out, out / "RESULTS.md", out)
    else:
        write_report(results, out, ROOT / "experiments" / "RESULTS.md", ROOT / "experiments" / "results")
    print(json.dumps(results["wilcoxon"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
