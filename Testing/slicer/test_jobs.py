"""The module's background process: process trees, cancel, errors, and the export/run/load path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR

from ProgressiveRegistrationLib.slicer import jobs


def _wait(job: jobs.BackgroundJob, timeout_s: float = 600.0) -> list:
    """Poll like the module's timer until the job has finished; returns every poll."""
    polls, t0 = [], time.monotonic()
    while not job.finished:
        polls.append(job.poll())
        assert time.monotonic() - t0 < timeout_s, "the job did not finish"
        time.sleep(0.05)
    polls.append(job.poll())
    return polls


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


LAUNCHER = textwrap.dedent("""
    # Like PythonSlicer: a launcher whose child does the work (and writes into the work folder).
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
                              "import time, pathlib, sys\\n"
                              "p = pathlib.Path(sys.argv[1])\\n"
                              "while True:\\n"
                              "    p.write_text(str(time.time())); time.sleep(0.05)", sys.argv[1]])
    print(child.pid, flush=True)
    print('{"fraction": 0.5, "message": "halfway"}', flush=True)
    child.wait()
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process handling")
def test_cancel_kills_the_whole_process_tree_then_removes_the_work_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    job = jobs.BackgroundJob([sys.executable, "-c", LAUNCHER, str(work / "alive.txt")], work_dir=work)
    t0 = time.monotonic()
    lines, progress = [], []
    while not (lines and progress) and time.monotonic() - t0 < 30:
        found = job.poll()
        lines += found.log
        progress += found.progress
        time.sleep(0.05)
    child = int(lines[0])
    assert progress == [(0.5, "halfway")]
    assert _alive(job.process.pid) and _alive(child)
    job.cancel()
    assert not _alive(job.process.pid)
    assert not _alive(child), "the launcher's child survived the cancel"
    assert not work.exists()
    assert job.cancelled and job.error() == "cancelled"


def test_a_failing_process_reports_its_error_line_and_keeps_all_of_stderr(tmp_path):
    code = ("import sys\n"
            "for i in range(50): print(f'detail {i}', file=sys.stderr)\n"
            "print('progreg register: error: the fixed image is empty', file=sys.stderr)\n"
            "print('after the error', file=sys.stderr)\n"
            "sys.exit(2)")
    job = jobs.BackgroundJob([sys.executable, "-c", code], work_dir=tmp_path / "w")
    _wait(job, 60)
    assert job.returncode == 2
    assert job.error() == "progreg register: error: the fixed image is empty"
    assert len(job.stderr_lines) == 52 and job.stderr_lines[0] == "detail 0"


def test_a_crash_without_an_error_line_says_how_it_ended():
    job = jobs.BackgroundJob([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    _wait(job, 60)
    assert "killed by signal 9" in job.error()
    job = jobs.BackgroundJob([sys.executable, "-c", "import sys; print('Segmentation fault', file=sys.stderr); sys.exit(139)"])
    _wait(job, 60)
    assert job.error() == "the registration process failed (exit code 139): Segmentation fault"


def test_a_process_that_cannot_start_removes_its_work_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "fixed.nrrd").write_bytes(b"inputs already exported")
    with pytest.raises(OSError):
        jobs.BackgroundJob([str(tmp_path / "no such program")], work_dir=work)
    assert not work.exists()


class _StartupInfo:
    """What subprocess.STARTUPINFO holds on Windows (this test runs anywhere)."""

    def __init__(self):
        self.dwFlags = 0
        self.wShowWindow = 1  # SW_SHOWNORMAL


def _as_windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "STARTUPINFO", _StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "STARTF_USESHOWWINDOW", 1, raising=False)
    monkeypatch.setattr(subprocess, "SW_HIDE", 0, raising=False)


def test_no_console_window_on_windows(monkeypatch):
    """The flags of Slicer's launchConsoleProcess (Base/Python/slicer/util.py): STARTF_USESHOWWINDOW, SW_HIDE;
    for the background process and for taskkill alike."""
    assert jobs.hidden_window_options() == {} or sys.platform == "win32"
    _as_windows(monkeypatch)
    info = jobs.hidden_window_options()["startupinfo"]
    assert info.dwFlags & 1 and info.wShowWindow == 0
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)))
    jobs.kill_process_tree(12345)
    (args, kw), = calls
    assert args[0] == "taskkill" and kw["startupinfo"].wShowWindow == 0
    started = []

    class Popen:
        def __init__(self, args, **kw):
            started.append(kw)
            raise FileNotFoundError(args[0])

    monkeypatch.setattr(subprocess, "Popen", Popen)
    with pytest.raises(FileNotFoundError):
        jobs.BackgroundJob(["PythonSlicer.exe", "-m", "ProgressiveRegistrationLib"])
    assert started[0]["startupinfo"].wShowWindow == 0


def test_kept_result_files_move_to_a_folder_of_their_own(tmp_path):
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    (out / "summary.json").write_text("{}", encoding="utf-8")
    first = jobs.keep_results(out, tmp_path / "kept", "exhale: 50/50")
    assert first.parent == tmp_path / "kept" and (first / "summary.json").is_file() and not out.exists()
    assert "/" not in first.name and ":" not in first.name and first.name.startswith("exhale_ 50_50 ")
    out.mkdir()
    second = jobs.keep_results(out, tmp_path / "kept", "exhale: 50/50")
    assert second != first and second.is_dir() and first.is_dir()


slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")


def test_export_run_poll_and_load_like_the_module(tmp_path, tiny_model):
    from ProgressiveRegistrationLib.slicer import mrml

    scene = slicer.vtkMRMLScene()
    fixed, moving, fpts, mpts = mrml.sample_pair_nodes(scene)
    work = tmp_path / "work"
    work.mkdir()
    export = mrml.export_job(scene, fixed, moving, work, fpts, mpts)
    env = {**os.environ, "PYTHONPATH": str(MODULE_DIR)}
    job = jobs.BackgroundJob(export.command(sys.executable, tiny_model), env=env, work_dir=work)
    polls = _wait(job)
    assert job.error() is None, job.stderr_lines
    fractions = [f for p in polls for f, _ in p.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("refining" in m for p in polls for _, m in p.progress)  # refinement is on by default
    # The module shows the transform itself: no warped image, no overview figure.
    written = {p.name for p in (work / "out").iterdir() if p.name != ".progreg-outputs.json"}
    assert written == {"transform.nrrd", "jacobian.nrrd", "summary.json", "tre.csv", "report.html", "quality.nrrd",
                       "inverse_consistency.nrrd"}
    result = mrml.load_results(scene, export)
    # The quality checks as a table node (PASS / WARN / FAIL as summary.json has them), the doubt
    # map with its colour table, and the report kept before the work folder goes.
    checks = result.summary["quality"]["checks"]
    table = result.quality_table.GetTable()
    assert table.GetNumberOfRows() == len(checks) + 1
    assert [table.GetValue(i, 3).ToString() for i in range(len(checks))] == [c["verdict"] for c in checks]
    assert table.GetValue(len(checks), 3).ToString() == result.summary["quality"]["overall"]
    display = result.quality_map.GetDisplayNode()
    assert display.GetColorNode().GetName() == mrml.QUALITY_COLORS and display.GetWindowLevelMax() == 1.0
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.quality_map),
                               sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "quality.nrrd"))))
    kept = jobs.keep_report(export.out_dir, tmp_path / "reports", "exhale: 1/2")
    assert kept.endswith(".html") and "exhale_ 1_2 " in kept and Path(kept).read_bytes() == \
        Path(result.report_path).read_bytes()
    assert jobs.keep_report(export.out_dir, tmp_path / "reports", "exhale: 1/2") != kept  # never overwritten
    job.cleanup()
    assert not work.exists() and Path(kept).is_file()
    assert moving.GetParentTransformNode() is result.transform
    assert result.tre_after_mm["mean"] < result.tre_network_mm["mean"]
    summary = json.loads(json.dumps(result.summary))
    assert summary["refinement"]["levels"]


def test_results_are_not_attached_to_removed_nodes(tmp_path, tiny_model):
    from ProgressiveRegistrationLib.core.errors import InputError
    from ProgressiveRegistrationLib.slicer import mrml

    scene = slicer.vtkMRMLScene()
    fixed, moving, _, _ = mrml.sample_pair_nodes(scene)
    export = mrml.export_job(scene, fixed, moving, tmp_path)
    r = subprocess.run([*export.command(sys.executable, tiny_model, refine=False)], cwd=MODULE_DIR,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    scene.RemoveNode(moving)
    n = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="removed from the scene"):
        mrml.load_results(scene, export)
    assert scene.GetNumberOfNodes() == n
