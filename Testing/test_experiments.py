"""The experiment driver's statistics and report (experiments/paper_cpu.py), on made-up results."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import ROOT

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.fixture(scope="module")
def paper_cpu():
    spec = importlib.util.spec_from_file_location("paper_cpu", ROOT / "experiments" / "paper_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wilcoxon_w_is_the_papers_statistic(paper_cpu):
    # The paper: progressive better on all 17 pairs gives W = 17·18/2 = 153, p = 2^-17.
    rng = np.random.default_rng(0)
    baseline = rng.uniform(2, 6, 17)
    progressive = baseline - rng.uniform(0.1, 1.0, 17)
    w = paper_cpu._one_sided_wilcoxon(progressive, baseline)
    assert w["W"] == 153 and w["n"] == 17
    assert w["p"] == pytest.approx(2.0**-17, rel=1e-6)
    # Mixed pairs: W and scipy's rank sum for the other sign add up to n(n+1)/2.
    mixed = baseline + rng.normal(0, 0.5, 17)
    w = paper_cpu._one_sided_wilcoxon(mixed, baseline)
    other = scipy_stats.wilcoxon(mixed, baseline, alternative="less").statistic
    assert w["W"] + other == pytest.approx(153)
    assert paper_cpu._one_sided_wilcoxon(baseline, baseline) is None


def test_arms_share_seed_and_follow_table_iv(paper_cpu):
    arms = paper_cpu.arms()
    assert [a for a in arms if a.startswith("init")] == ["init0", "init1", "init2"]
    assert all("train.mode=both" in arms[f"init{s}"] for s in range(3))
    no_transitions = arms["delta0_Delta250"]
    assert "schedule.delta=0" in no_transitions and "train.seed=0" in no_transitions
    # The CPU schedule is the paper's δ = 2000, Δ = 6000 divided by 16.
    assert paper_cpu.SCALE["schedule.delta"] * 16 == 2000 and paper_cpu.SCALE["schedule.Delta"] * 16 == 6000


def test_report_tables_and_kept_reading(paper_cpu, tmp_path):
    out = tmp_path / "runs"
    for run, arms in (("init0", ("progressive", "baseline")), ("delta0_Delta250", ("progressive",))):
        (out / run).mkdir(parents=True)
        (out / run / "config.json").write_text("{}", encoding="utf-8")
        head = ["iteration", "seconds", "identity_val_mm"] + [f"{a}_val_mm" for a in arms]
        rows = [",".join(head)] + [",".join(map(str, [50 * k, 10.0 * k, 12.0] + [12.0 - k] * len(arms)))
                                   for k in range(1, 4)]
        (out / run / "log.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    kinds = ["breathing"] * 3 + ["synthetic"]
    summ = {"breathing": {"mean": 2.5, "sd": 1.0, "n": 30}, "synthetic": {"mean": 4.0, "sd": 2.0, "n": 100}}
    fold = {"breathing": {"mean": 0.01, "sd": 0.0, "n": 3}, "synthetic": {"mean": 0.2, "sd": 0.0, "n": 1}}
    model = {"per_pair_mm": [2.0, 2.5, 3.0, 4.0], "folding_percent": [0, 0, 0.03, 0.2], "tre_mm": summ, "folding": fold}
    results = {"pairs": ["a", "b", "c", "d"], "kinds": kinds, "before_mm": [8.0, 9.0, 10.0, 15.0],
               "models": {"init0/progressive": model, "init0/baseline": {**model, "per_pair_mm": [3, 3, 4, 5]}},
               "runs": {"init0": {"status": "ok", "iterations": 150, "seconds": 30.0},
                        "delta0_Delta250": {"status": "exit 1: FloatingPointError: progressive loss is nan",
                                            "iterations": 100, "seconds": 20.0}},
               "wilcoxon": {"init0/breathing": {"W": 6.0, "p": 0.125, "n": 3}}}
    json.dumps(results)  # what evaluate() writes must be JSON
    report = tmp_path / "RESULTS.md"
    paper_cpu.write_report(results, out, report, tmp_path / "figures")
    text = report.read_text(encoding="utf-8")
    rows = _table_rows(text)
    # Mean ± SD TRE and mean folding per kind of pair, as in the results.
    assert _numbers(rows["init0/progressive"]) == [2.5, 1.0, 4.0, 2.0, 0.01, 0.2]
    assert _numbers(rows["init0"]) == [6, 0.125, 3]  # W, p, n of the Wilcoxon test
    assert rows["delta0_Delta250/–"][0].startswith("exit 1: FloatingPointError")  # a crashed arm is reported
    assert (tmp_path / "figures" / "training_curves.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "per_pair.png").stat().st_size > 10_000
    report.write_text(text.replace("(to be written)", "Progressive wins here."), encoding="utf-8")
    paper_cpu.write_report(results, out, report, tmp_path / "figures")
    assert report.read_text(encoding="utf-8").endswith("## Reading\n\nProgressive wins here.\n")


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Every Markdown table row, by its first cell: the other cells."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def _numbers(cells: list[str]) -> list[float]:
    import re

    return [float(v) for c in cells for v in re.findall(r"-?\d+(?:\.\d+)?", c) if c != "breathing"]


@pytest.fixture(scope="module")
def shipped_model(paper_cpu):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("shipped_model", ROOT / "experiments" / "shipped_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_model_report_checks_the_targets(paper_cpu, shipped_model):
    kinds = ["breathing"] * 5 + ["synthetic"]
    rng = np.random.default_rng(3)
    before = rng.uniform(5, 7, 6)
    good = [list(b * 0.3 + rng.uniform(-0.1, 0.1, 4)) for b in before]  # 30 % of the initial TRE
    worse = [list(np.asarray(a) + 1.0) for a in good]  # the baseline: 1 mm worse on every pair
    results = {"pairs": [f"p{k}" for k in range(6)], "kinds": kinds, "before_mm": list(before),
               "before_tre_mm": {"breathing": {"mean": float(before[:5].mean()), "sd": 0.5, "n": 20},
                                 "synthetic": {"mean": float(before[5]), "sd": 0.5, "n": 4}},
               "models": {}, "wilcoxon": {}}
    for name, after, fold in (("progressive", good, 0.02), ("baseline", worse, 1.5)):
        done = {"pairs": results["pairs"], "after_mm": after, "folding_percent": [fold] * 6}
        results["models"][name] = paper_cpu.model_summary(done, kinds)
    a, b = (np.array(results["models"][n]["per_pair_mm"]) for n in ("progressive", "baseline"))
    results["wilcoxon"]["baseline"] = {"breathing": paper_cpu._one_sided_wilcoxon(a[:5], b[:5]),
                                       "all": paper_cpu._one_sided_wilcoxon(a, b)}
    t = shipped_model.targets(results)
    fraction = results["models"]["progressive"]["tre_mm"]["breathing"]["mean"] / before[:5].mean()
    assert t["model"] == "progressive" and t["tre_fraction"] == pytest.approx(fraction) and 0.28 < fraction < 0.32
    assert t["tre_met"] and t["folding_met"] and t["worst_folding_percent"] == pytest.approx(0.02)
    assert t["better_than"]["baseline"]["better"]
    w = results["wilcoxon"]["baseline"]
    assert (w["breathing"]["W"], w["all"]["W"]) == (15, 21)  # better on every pair: the largest W for 5 and 6 pairs
    # The other way round: the baseline misses both targets and is not better.
    swapped = dict(results, models={"baseline": results["models"]["baseline"],
                                    "progressive": results["models"]["progressive"]})
    swapped["wilcoxon"] = {"progressive": {"breathing": paper_cpu._one_sided_wilcoxon(b[:5], a[:5]), "all": None}}
    t = shipped_model.targets(swapped)
    fraction = results["models"]["baseline"]["tre_mm"]["breathing"]["mean"] / before[:5].mean()
    assert t["model"] == "baseline" and t["tre_fraction"] == pytest.approx(fraction) and fraction > 0.4
    assert not t["tre_met"] and not t["folding_met"] and t["worst_folding_percent"] == pytest.approx(1.5)
    assert not t["better_than"]["progressive"]["better"] and swapped["wilcoxon"]["progressive"]["breathing"]["W"] == 0
    # The report renders those numbers.
    text = shipped_model.report(swapped, {"progressive": "m.pt", "baseline": "b.pt"}, "cmd")
    assert f"NOT met ({fraction:.0%})" in text and "W = 0 of 15" in text


def test_evaluation_cache_follows_the_model_file(paper_cpu, tiny_model, tmp_path):
    """A cached evaluation is reused for the same model file and redone when the file under
    that name changes (a retrained model must not inherit its predecessor's numbers)."""
    import shutil

    import SimpleITK as sitk
    import torch
    from conftest import SAMPLE

    from ProgressiveRegistrationLib.registration.evaluation import PointPair
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    bp = simulate(sitk.ReadImage(str(SAMPLE)), seed=3)
    pairs = [PointPair("sample", bp.inhale, bp.exhale, bp.fixed_points_lps, bp.moving_points_lps, "breathing")]
    model, cache = tmp_path / "model.pt", tmp_path / "eval_m.json"
    shutil.copy(tiny_model, model)
    first = paper_cpu.evaluate_model(model, pairs, cache)
    assert len(first["after_mm"][0]) == len(bp.fixed_points_lps)
    marked = {**first, "after_mm": [[-1.0]]}
    cache.write_text(json.dumps(marked), encoding="utf-8")
    assert paper_cpu.evaluate_model(model, pairs, cache)["after_mm"] == [[-1.0]]  # same file: cache used
    state = torch.load(model, weights_only=True)
    state["iterations"] = 1  # another file, same weights
    torch.save(state, model)
    again = paper_cpu.evaluate_model(model, pairs, cache)
    assert again["after_mm"] == first["after_mm"] and again["model_sha256"] != first["model_sha256"]


def test_same_budget_snapshot_is_the_first_kept_one_past_the_reference_time(shipped_model, tmp_path):
    def run(name, rows, kept=()):
        folder = tmp_path / name
        (folder / "snapshots").mkdir(parents=True)
        (folder / "log.csv").write_text("iteration,seconds\n" + "".join(f"{i},{s}\n" for i, s in rows), encoding="utf-8")
        for i in kept:
            (folder / "snapshots" / f"model_{i:06d}.pt").write_bytes(b"")
        return folder

    progressive = run("p", [(50, 10.0), (100, 20.0), (150, 31.5)])
    baseline = run("b", [(50, 12.0), (100, 24.0), (150, 36.0), (200, 48.0)], kept=(50, 100, 200))
    # 31.5 s: the baseline passes it at iteration 150, whose model was not kept; 200 was.
    assert shipped_model.same_budget_snapshot(baseline, progressive).name == "model_000200.pt"
    short = run("s", [(50, 12.0)], kept=(50,))
    with pytest.raises(ValueError, match="no kept snapshot"):
        shipped_model.same_budget_snapshot(short, progressive)


def test_time_figure_plots_validation_error_against_training_hours(shipped_model, tmp_path):
    runs = {}
    for name, arm, rows in (("p", "progressive", [(50, 1800.0, 9.0), (100, 7200.0, 5.0)]),
                            ("b", "baseline", [(50, 3600.0, 8.0)])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "log.csv").write_text(f"iteration,seconds,identity_val_mm,{arm}_val_mm\n"
                                        + "".join(f"{i},{s},11.0,{v}\n" for i, s, v in rows), encoding="utf-8")
        runs[name] = folder
    (tmp_path / "empty").mkdir()
    runs["empty"] = tmp_path / "empty"  # a run without a log yet draws nothing
    curves = shipped_model.time_figure(runs, tmp_path / "t.png")
    assert curves == {"p (progressive, 100 it.)": ([0.5, 2.0], [9.0, 5.0]), "b (baseline, 50 it.)": ([1.0], [8.0])}
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_of_a_missing_run_are_one_clear_error(shipped_model, tiny_model, tmp_path, capsys):
    report = tmp_path / "r" / "evaluation.md"
    with pytest.raises(SystemExit) as exit_info:
        shipped_model.main(["--model", f"m={tiny_model}", "--report", str(report), "--curves", f"x={tmp_path / 'none'}"])
    assert exit_info.value.code == 2 and "--curves x=" in capsys.readouterr().err
    assert not report.parent.exists()


def test_shipped_model_command_runs_end_to_end(shipped_model, tiny_model, tmp_path):
    """The script's own command (its ``main``), on the tiny pairs of ``--micro``: the report
    and its JSON are written, the model's evaluation is cached."""
    report = tmp_path / "eval" / "evaluation.md"
    assert shipped_model.main(["--model", f"tiny={tiny_model}", "--cache", str(tmp_path / "cache"),
                               "--report", str(report), "--micro"]) in (0, None)
    results = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    assert list(results["models"]) == ["tiny"] and len(results["pairs"]) == len(results["kinds"]) >= 2
    assert "tiny" in report.read_text(encoding="utf-8") and any((tmp_path / "cache").iterdir())
