"""`progreg batch` on a real local Dask cluster of two workers: four small phantom cases, one
broken on purpose; a rerun; fields equal to `progreg register`'s bit for bit; a worker killed
mid-case."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR, assert_bad_input, progreg

pytest.importorskip("distributed", reason="dask[distributed] is part of the test extras")

from ProgressiveRegistrationLib.batch.runner import MARKER_NAME  # noqa: E402
from ProgressiveRegistrationLib.core.atomic import LOCK_NAME, STAGING_PREFIX  # noqa: E402
from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402
from ProgressiveRegistrationLib.simulation.phantom import generate  # noqa: E402

OPTIONS = ["--no-refine", "--no-report"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four phantom breathing pairs (64×56×48 voxels) with landmarks; case 'broken' has a text file as its moving image."""
    d = tmp_path_factory.mktemp("cohort")
    lines = ["id,fixed,moving,fixed_landmarks,moving_landmarks"]
    for k in range(4):
        ph = generate(300 + k, (64, 56, 48), (5.0, 5.0, 6.5))
        pair = simulate(ph.image, seed=k, amplitude_si_mm=10.0, amplitude_ap_mm=3.0, fixed_landmarks_lps=ph.bifurcations_lps)
        case = d / f"case{k}"
        case.mkdir()
        sitk.WriteImage(pair.inhale, str(case / "fixed.nrrd"))
        sitk.WriteImage(pair.exhale, str(case / "moving.nrrd"))
        write_markups_json(case / "fixed.mrk.json", pair.fixed_points_lps)
        write_markups_json(case / "moving.mrk.json", pair.moving_points_lps)
        name = "broken" if k == 3 else f"p{k}"
        if k == 3:
            (case / "moving.nrrd").write_text("NRRD0004\nthis is not an image\n")
        lines.append(f"{name},case{k}/fixed.nrrd,case{k}/moving.nrrd,case{k}/fixed.mrk.json,case{k}/moving.mrk.json")
    (d / "manifest.csv").write_text("\n".join(lines) + "\n")
    return d


def _batch(cohort, out, tiny_model, *extra, **kwargs):
    return progreg("batch", cohort / "manifest.csv", "--out", out, "--workers", 2, "--model", tiny_model, "--quiet",
                   *OPTIONS, *extra, new_process=True, **kwargs)


def _rows(out):
    with open(out / "cohort.csv", newline="", encoding="utf-8") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def test_a_cohort_runs_resumes_and_equals_progreg_register(cohort, tmp_path, tiny_model):
    out = tmp_path / "out"
    r = _batch(cohort, out, tiny_model)
    assert r.returncode == 1, r.stderr  # one case failed
    rows = _rows(out)
    assert [rows[f"p{k}"]["status"] for k in range(3)] == ["done"] * 3
    assert rows["broken"]["status"] == "failed" and "moving image" in rows["broken"]["error"]
    assert "3 of 4 cases done" in r.stdout and "broken:" in r.stdout
    assert {rows[f"p{k}"]["worker"] for k in range(3)} and all(float(rows[f"p{k}"]["tre_after_mm"]) > 0 for k in range(3))
    for k in range(3):
        summary = json.loads((out / f"p{k}" / "summary.json").read_text())
        assert float(rows[f"p{k}"]["tre_before_mm"]) == pytest.approx(summary["tre_before_mm"]["mean"], abs=1e-4)
        assert (out / f"p{k}" / MARKER_NAME).is_file()
    assert not (out / "broken" / "transform.nrrd").exists() and not (out / "broken" / MARKER_NAME).exists()
    page = (out / "cohort.html").read_text(encoding="utf-8")
    assert "4 cases: 3 done, 1 failed" in page and "broken" in page and "data:image/png;base64," in page

    # The same case through `progreg register` (one thread, as each of the two workers has): bit for bit.
    direct = tmp_path / "direct"
    c = cohort / "case2"
    r1 = progreg("register", c / "fixed.nrrd", c / "moving.nrrd", "--out", direct, "--fixed-landmarks",
                 c / "fixed.mrk.json", "--moving-landmarks", c / "moving.mrk.json", "--model", tiny_model, *OPTIONS)
    assert r1.returncode == 0, r1.stderr
    for name in ("transform.nrrd", "jacobian.nrrd", "warped_moving.nrrd"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "p2" / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(direct / name))), err_msg=name)

    # A rerun does nothing for the five and retries the broken one; then, repaired, it is done.
    stamps = {k: (out / f"p{k}" / "transform.nrrd").stat().st_mtime_ns for k in range(3)}
    r = _batch(cohort, out, tiny_model)
    assert "(3 unchanged since an earlier run)" in r.stdout and r.returncode == 1
    assert {k: (out / f"p{k}" / "transform.nrrd").stat().st_mtime_ns for k in range(3)} == stamps
    sitk.WriteImage(sitk.ReadImage(str(cohort / "case2" / "moving.nrrd")), str(cohort / "case3" / "moving.nrrd"))
    try:
        r = _batch(cohort, out, tiny_model)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _rows(out)["broken"]["status"] == "done" and "4 of 4 cases done (3 unchanged" in r.stdout
    finally:
        (cohort / "case3" / "moving.nrrd").write_text("NRRD0004\nthis is not an image\n")


def test_a_changed_setting_or_input_redoes_a_case_and_nothing_else_does(cohort, tmp_path, tiny_model):
    """What decides whether a rerun skips a case: its inputs' contents and the settings that
    change a result (a case redone writes its outputs as a single run does: the output folder's
    sweep, test_a_reused_folder_keeps_only_the_new_runs_outputs)."""
    from dataclasses import replace

    from ProgressiveRegistrationLib.batch.manifest import read_manifest
    from ProgressiveRegistrationLib.batch.runner import Settings, fingerprint

    case = read_manifest(cohort / "manifest.csv")[0]
    base = Settings(model=tiny_model)
    key = fingerprint(case, base)
    assert fingerprint(case, replace(base, threads=4)) == key  # where and how fast it runs: the same result
    for changed in (replace(base, fmt="nii.gz"), replace(base, refinement=None), replace(base, report=False),
                    replace(base, model=None)):
        assert fingerprint(case, changed) != key, changed
    # The same file with other contents is another case; its contents back, the same case again.
    copy = replace(case, fixed=tmp_path / "fixed.nrrd")
    original = case.fixed.read_bytes()
    copy.fixed.write_bytes(original)
    first = fingerprint(copy, base)
    sitk.WriteImage(sitk.ReadImage(str(case.fixed)) + 1, str(copy.fixed))
    assert fingerprint(copy, base) != first
    copy.fixed.write_bytes(original)
    assert fingerprint(copy, base) == first


def test_a_worker_killed_mid_case_leaves_no_partial_output_and_the_case_is_done_again(cohort, tmp_path, tiny_model):
    import psutil

    (tmp_path / "m.csv").write_text("id,fixed,moving\n" + "".join(
        f"k{k},{cohort}/case{k}/fixed.nrrd,{cohort}/case{k}/moving.nrrd\n" for k in range(2)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ProgressiveRegistrationLib", "batch", str(tmp_path / "m.csv"),
                             "--out", str(out), "--workers", "2", "--model", tiny_model, "--quiet", "--no-refine"],
                            cwd=MODULE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 180
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        lock = out / "k0" / LOCK_NAME
        if lock.exists():  # a worker has entered case k0: find the process that holds its lock, and kill it
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if any(f.path == str(lock) for f in child.open_files()):
                        child.kill()
                        killed = child.pid
                        break
                except psutil.Error:
                    continue
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the case finished before a worker could be killed"
    assert proc.returncode == 0, stdout + stderr
    rows = _rows(out)
    assert rows["k0"]["status"] == "done" and not rows["k0"]["worker"].endswith(f":{killed}")
    assert not list((out / "k0").glob(f"{STAGING_PREFIX}*")) and (out / "k0" / "transform.nrrd").is_file()
    assert sorted(os.listdir(out / "k0")) == sorted([".progreg-outputs.json", MARKER_NAME, *json.loads(
        (out / "k0" / "summary.json").read_text())["files"]])


# --- the output folder: checked before any case runs, its study table written whole or not at all ----

def test_a_case_folder_linked_from_elsewhere_is_refused_before_any_case_runs(tmp_path):
    (tmp_path / "f.nrrd").write_text("x")  # never read: the refusal comes first
    (tmp_path / "m.csv").write_text("id,fixed,moving\np0,f.nrrd,f.nrrd\np1,f.nrrd,f.nrrd\n")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "transform.nrrd").write_text("the user's own")
    (out / "p1").symlink_to(elsewhere, target_is_directory=True)
    r = progreg("batch", tmp_path / "m.csv", "--out", out, "--workers", 1, "--quiet", *OPTIONS)  # no cluster starts
    assert_bad_input(r)
    assert "p1 is a symbolic link to" in r.stderr and str(elsewhere.resolve()) in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p1"]
    assert [p.name for p in elsewhere.iterdir()] == ["transform.nrrd"]


def test_a_full_disk_while_the_study_table_is_written_is_one_line_and_no_half_table(tmp_path, monkeypatch):
    """Every case done by an earlier run (no cluster starts); the disk is full when the table is written."""
    import errno

    from ProgressiveRegistrationLib.batch import cohort
    from ProgressiveRegistrationLib.batch.manifest import read_manifest
    from ProgressiveRegistrationLib.batch.runner import Settings, case_row, fingerprint
    from ProgressiveRegistrationLib.core.atomic import write_file

    (tmp_path / "f.nrrd").write_text("x")
    (tmp_path / "m.csv").write_text("id,fixed,moving\np0,f.nrrd,f.nrrd\np1,f.nrrd,f.nrrd\n")
    out = tmp_path / "out"
    settings = Settings(refinement=None, report=False)  # what OPTIONS ask for
    for case in read_manifest(tmp_path / "m.csv"):
        (out / case.id).mkdir(parents=True)
        (out / case.id / MARKER_NAME).write_text(json.dumps({"fingerprint": fingerprint(case, settings),
                                                             "row": case_row(case, "done")}))

    def half_then_full(tmp):
        with open(tmp, "w") as f:
            f.write("id,kind,sta")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cohort, "write_csv", lambda path, rows: write_file(path, half_then_full))
    r = progreg("batch", tmp_path / "m.csv", "--out", out, "--workers", 1, "--quiet", *OPTIONS)
    assert_bad_input(r)
    assert f"no space left on device while writing {out / 'cohort.csv'}" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == ["p0", "p1"]  # no half table, no temporary, no staging, no lock
