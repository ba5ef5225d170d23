"""The shipped model against its same-budget baseline, on the held-out pairs of ``paper_cpu.py``.

The targets for a shipped model, on held-out breathing pairs (phantoms never seen in
training, simulated exhale, landmarks at vessel bifurcations): mean TRE at most 40 % of the
initial mean TRE, folding under 1 % of the body's voxels, and better than a baseline given
the same budget. This script evaluates any number of exported models on the same 17
breathing pairs and 2 synthetic deformations of held-out real CT that ``paper_cpu.py`` uses,
tests the first model against each other one (one-sided Wilcoxon over pairs, the paper's W)
and writes a markdown table, a JSON file and a figure.

    python experiments/shipped_model.py \\
        --model progressive=runs/cpu-v1/model.pt --model baseline=runs/cpu-v1-baseline/model.pt \\
        --cache runs/shipped-eval --report experiments/candidates/evaluation_cpu_v1.md

``--model baseline=runs/cpu-v2-baseline@runs/cpu-v2`` picks the baseline run's kept snapshot
(``train.keep_snapshots``) at the progressive run's training time: the same-budget baseline.
Each model's evaluation is cached in ``--cache`` (keyed by its name and the model file's
content), so adding a model later re-evaluates only that one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_cpu import (HELD_OUT_REAL, REAL_CT, _one_sided_wilcoxon, _read_log, evaluate_model,  # noqa: E402,I001
                       evaluation_pairs, file_sha256, model_summary)

TRE_TARGET_FRACTION = 0.40
FOLDING_TARGET_PERCENT = 1.0


def run(models: dict[str, Path], cache: Path, micro: bool = False) -> dict:
    """Evaluate ``models`` (name -> model file); the first is compared with all others."""
    pairs = evaluation_pairs(micro)
    kinds = [p.kind for p in pairs]
    before = [float(np.linalg.norm(p.fixed_lps - p.moving_lps, axis=1).mean()) for p in pairs]
    before_all = {k: np.concatenate([np.linalg.norm(p.fixed_lps - p.moving_lps, axis=1)
                                     for p in pairs if p.kind == k]) for k in set(kinds)}
    results = {"pairs": [p.name for p in pairs], "kinds": kinds, "before_mm": before,
               "before_tre_mm": {k: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "n": int(len(v))}
                                 for k, v in before_all.items()},
               "models": {}, "wilcoxon": {}}
    for name, path in models.items():
        done = evaluate_model(path, pairs, cache / f"eval_{name}.json")
        results["models"][name] = {"file": str(path), **model_summary(done, kinds)}
    first, *others = list(models)
    breathing = np.array([k == "breathing" for k in kinds])
    for other in others:
        a = np.array(results["models"][first]["per_pair_mm"])
        b = np.array(results["models"][other]["per_pair_mm"])
        results["wilcoxon"][other] = {kind: _one_sided_wilcoxon(a[sel], b[sel])
                                      for kind, sel in (("breathing", breathing), ("all", np.ones_like(breathing)))}
    return results


def _tre(summary: dict | None) -> str:
    return f"{summary['mean']:.2f} ± {summary['sd']:.2f}" if summary else "–"


def _seen_in_training(results: dict, models: dict[str, Path]) -> dict[tuple[str, str], list[str]]:
    """(evaluation image, 'training' or 'validation') -> the models whose config lists it,
    by content (the bundled sample is the elastix lung image under another name)."""
    from ProgressiveRegistrationLib.core.errors import InputError
    from ProgressiveRegistrationLib.training.checkpoint import read_checkpoint

    evaluated = {file_sha256(REAL_CT / rel): Path(rel).name for rel in HELD_OUT_REAL} | {None: None}
    digests: dict[str, str | None] = {}  # a config lists an image many times; models share images

    def digest(entry: str) -> str | None:
        if entry.startswith("phantom:"):
            return None
        if entry not in digests:
            digests[entry] = file_sha256(ROOT / entry)
        return digests[entry]

    seen: dict[tuple[str, str], list[str]] = {}
    for name, path in models.items():
        try:
            # Weights only (read_checkpoint): a model file holds plain containers and tensors.
            train = read_checkpoint(path).get("config", {}).get("train", {})
        except (InputError, OSError):
            continue
        for role, key in (("training", "images"), ("validation", "validation_images")):
            for entry in train.get(key, []):
                image = evaluated.get(digest(str(entry)))
                if image and name not in seen.setdefault((image, role), []):
                    seen[(image, role)].append(name)
    return seen


def targets(results: dict) -> dict:
    """The first model's targets: TRE fraction of the initial (and whether ≤ the target),
    worst folding (and whether < the target), and per compared model whether it is better."""
    first = next(iter(results["models"]))
    m = results["models"][first]
    frac = m["tre_mm"]["breathing"]["mean"] / results["before_tre_mm"]["breathing"]["mean"]
    worst = max(m["folding_percent"])
    better = {}
    for other in results["wilcoxon"]:
        mine, theirs = m["tre_mm"]["breathing"]["mean"], results["models"][other]["tre_mm"]["breathing"]["mean"]
        better[other] = {"better": mine < theirs, "mean_mm": mine, "other_mean_mm": theirs}
    return {"model": first, "tre_fraction": frac, "tre_met": frac <= TRE_TARGET_FRACTION,
            "worst_folding_percent": worst, "folding_met": worst < FOLDING_TARGET_PERCENT, "better_than": better}


def report(results: dict, models: dict[str, Path], command: str, curves: bool = False) -> str:
    initial = results["before_tre_mm"]
    before = initial["breathing"]["mean"]
    n_synthetic = sum(k == "synthetic" for k in results["kinds"])
    lines = ["# Shipped model: held-out evaluation (experiments/shipped_model.py)", "",
             f"{sum(k == 'breathing' for k in results['kinds'])} held-out breathing pairs "
             f"(initial TRE {_tre(initial['breathing'])} mm) and {n_synthetic} synthetic deformations of held-out "
             f"real CT (initial {_tre(initial.get('synthetic'))} mm). TRE over all landmarks; folding = % of body "
             "voxels with det J ≤ 0 (mean over pairs / worst pair).", "",
             "| model | breathing TRE (mm) | % of initial | folding % (mean / worst) | real-CT synthetic TRE (mm) |",
             "|---|---|---|---|---|",
             f"| no registration | {_tre(initial['breathing'])} | 100 % | – | {_tre(initial.get('synthetic'))} |"]
    for name, m in results["models"].items():
        t, f = m["tre_mm"]["breathing"], m["folding"]["breathing"]
        lines.append(f"| {name} (`{Path(models[name]).name}`) | {_tre(t)} | {100 * t['mean'] / before:.0f} % | "
                     f"{f['mean']:.3f} / {max(m['folding_percent']):.3f} | {_tre(m['tre_mm'].get('synthetic'))} |")
    seen = _seen_in_training(results, models)
    if seen:
        lines += ["", "Not held out for every model (the breathing pairs are): "
                  + "; ".join(f"{pair} is a {role} image of {', '.join(names)}" for (pair, role), names in seen.items())
                  + ". The real-CT column is therefore not a held-out result for those models."]
    first = next(iter(results["models"]))
    lines += ["", f"One-sided Wilcoxon signed-rank tests over pairs, H1: **{first}** has the lower mean TRE "
              "(W = sum of the ranks where it does; the paper's W = 153 is 17 of 17 pairs):", "",
              "| against | breathing pairs: W, p | all pairs: W, p |", "|---|---|---|"]
    for other, tests in results["wilcoxon"].items():
        cells = [f"W = {t['W']:.0f} of {t['n'] * (t['n'] + 1) // 2}, p = {t['p']:.2g}" if t else "–"
                 for t in (tests["breathing"], tests["all"])]
        lines.append(f"| {other} | {cells[0]} | {cells[1]} |")
    t = targets(results)
    lines += ["", f"Targets for **{first}**: mean TRE ≤ {TRE_TARGET_FRACTION:.0%} of the initial: "
              f"{'met' if t['tre_met'] else 'NOT met'} ({t['tre_fraction']:.0%}); folding < "
              f"{FOLDING_TARGET_PERCENT:g} % on every pair: {'met' if t['folding_met'] else 'NOT met'} "
              f"(worst {t['worst_folding_percent']:.3f} %)."]
    for other, b in t["better_than"].items():
        test = results["wilcoxon"][other]["breathing"]
        lines.append(f"Better than {other} on breathing pairs: {'yes' if b['better'] else 'no'} "
                     f"(mean {b['mean_mm']:.2f} against {b['other_mean_mm']:.2f} mm"
                     + (f"; p = {test['p']:.2g}" if test else "") + ").")
    lines += ["", "![per pair](evaluation.png)", ""]
    if curves:
        lines += ["![validation error against training time](training_time.png)", ""]
    lines += [f"Command: `{command}`", ""]
    return "\n".join(lines)


def figure(results: dict, path: Path) -> None:
    """Per breathing pair: TRE before and after each model, pairs sorted by initial TRE."""
    from ProgressiveRegistrationLib.registration.figures import pyplot as _plt

    plt = _plt()
    kinds = np.array(results["kinds"])
    before = np.array(results["before_mm"])[kinds == "breathing"]
    order = np.argsort(before)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    x = np.arange(len(order))
    ax.plot(x, before[order], "k.:", label="no registration")
    for name, m in results["models"].items():
        after = np.array(m["per_pair_mm"])[kinds == "breathing"]
        mean = m["tre_mm"]["breathing"]["mean"]  # over all landmarks, as in the table
        ax.plot(x, after[order], "o-", ms=4, lw=1, label=f"{name} ({mean:.2f} mm)")
    ax.axhline(TRE_TARGET_FRACTION * before.mean(), color="grey", lw=0.8, ls="--", label="target: 40 % of initial mean")
    ax.set_xlabel("held-out breathing pair (sorted by initial TRE)")
    ax.set_ylabel("mean landmark TRE (mm)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def time_figure(runs: dict[str, Path], path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Validation end-point error of each run's arm(s) against its training time: the axis on
    which a same-budget comparison is made (the arms are not equally fast per iteration).
    Returns the curves drawn: label -> (hours, mm)."""
    from ProgressiveRegistrationLib.registration.figures import pyplot as _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    curves, identity_mm = {}, None
    for name, run in runs.items():
        log = _read_log(run)
        if not log:
            continue
        identity_mm = identity_mm or float(log[0]["identity_val_mm"])  # the same validation set for every run
        hours = [float(r["seconds"]) / 3600 for r in log]
        for arm in ("progressive", "baseline"):
            if f"{arm}_val_mm" in log[0]:
                label = f"{name} ({arm}, {log[-1]['iteration']} it.)"
                curves[label] = (hours, [float(r[f"{arm}_val_mm"]) for r in log])
                ax.plot(*curves[label], lw=1.2, label=label)
    if identity_mm is not None:
        ax.axhline(identity_mm, color="grey", lw=0.8, ls=":", label="no registration")
    ax.set_xlabel("training time (h, one core each)")
    ax.set_ylabel("validation end-point error (mm)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return curves


def same_budget_snapshot(run: Path, reference: Path) -> Path:
    """The kept snapshot model of ``run`` (``train.keep_snapshots``) at the first snapshot whose
    training time reaches the last logged training time of ``reference``: a baseline given the
    same wall-clock budget as the progressive run ``reference``."""
    def rows(folder: Path) -> list[dict]:
        log = _read_log(folder)
        if not log:
            raise ValueError(f"{folder / 'log.csv'}: no training log")
        return log

    budget_s = float(rows(reference)[-1]["seconds"])
    kept = {int(p.stem.rsplit("_", 1)[1]): p for p in (run / "snapshots").glob("model_[0-9]*.pt")}  # its only arm
    for row in rows(run):
        iteration = int(row["iteration"])
        if float(row["seconds"]) >= budget_s and iteration in kept:
            return kept[iteration]
    raise ValueError(f"{run} has no kept snapshot at or beyond {budget_s:.0f} s of training "
                     f"(the end of {reference}); train it further or keep more snapshots")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                    help="a model to evaluate (repeat); the first is compared with the others. NAME=RUN@OTHER_RUN: "
                         "the kept snapshot of RUN at OTHER_RUN's training time (a same-budget baseline)")
    ap.add_argument("--cache", default="runs/shipped-eval", help="folder for per-model evaluation caches")
    ap.add_argument("--report", default="experiments/candidates/evaluation.md",
                    help="markdown report (figure and JSON beside it)")
    ap.add_argument("--micro", action="store_true", help="two tiny pairs: checks the machinery")
    ap.add_argument("--curves", nargs="+", default=[], metavar="NAME=RUN",
                    help="also plot these runs' validation error against training time (training_time.png)")
    args = ap.parse_args(argv)
    curves = dict(item.partition("=")[::2] for item in args.curves)
    for name, folder in curves.items():  # not `run`: that is this module's evaluation function
        if not name or not _read_log(Path(folder)):
            ap.error(f"--curves {name}={folder}: expected NAME=RUN with a training log in RUN/log.csv")
    models = {}
    for item in args.model:
        name, sep, file = item.partition("=")
        run_dir, at, budget = file.partition("@")
        try:
            models[name] = same_budget_snapshot(Path(run_dir), Path(budget)) if at else Path(file)
        except ValueError as err:
            ap.error(f"--model {item}: {err}")
        if not sep or not models[name].is_file():
            ap.error(f"--model {item}: expected NAME=FILE or NAME=RUN@OTHER_RUN with an existing model file")
    results = run(models, Path(args.cache), args.micro)
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    figure(results, out.with_name("evaluation.png"))
    if curves:
        time_figure({name: Path(run) for name, run in curves.items()}, out.with_name("training_time.png"))
    command = "python experiments/shipped_model.py " + " ".join(f"--model {m}" for m in args.model) + \
        f" --cache {args.cache} --report {args.report}" + (" --micro" if args.micro else "") + \
        (" --curves " + " ".join(args.curves) if args.curves else "")
    out.write_text(report(results, models, command, curves=bool(curves)), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
