"""The module's background process: process trees, cancel, errors, and the export/run/load path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MODULE_DIR

from ProgressiveRegistrationLib.core.errors import InputError
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


def _start_launcher(work: Path) -> tuple[jobs.BackgroundJob, int]:
    """The LAUNCHER in a job, once it has said its child's pid."""
    job = jobs.BackgroundJob([sys.executable, "-c", LAUNCHER, str(work / "alive.txt")], work_dir=work)
    t0, lines = time.monotonic(), []
    while not lines and time.monotonic() - t0 < 30:
        lines += job.poll().log
        time.sleep(0.05)
    return job, int(lines[0])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes stand in for taskkill's")
def test_cancel_on_windows_waits_for_the_tree_that_taskkill_leaves_running(tmp_path, monkeypatch):
    """taskkill /F /T returns before the processes have ended (and Windows refuses to delete a
    file they still hold): the cancel waits for the tree, then removes the work folder."""
    work = tmp_path / "work"
    work.mkdir()
    job, child = _start_launcher(work)
    events = []

    def taskkill(args, **kw):  # returns at once; the processes end half a second later
        assert args[:3] == ["taskkill", "/F", "/T"] and kw["startupinfo"].wShowWindow == 0
        import psutil

        tree = [int(args[-1]), *(p.pid for p in psutil.Process(int(args[-1])).children(recursive=True))]

        def later():
            time.sleep(0.5)
            events.append("killed")
            for pid in tree:
                os.kill(pid, 9)

        threading.Thread(target=later, daemon=True).start()
        events.append("taskkill returned")

    _as_windows(monkeypatch)
    monkeypatch.setattr(subprocess, "run", taskkill)
    job.cancel()
    events.append("cancel returned")
    assert events == ["taskkill returned", "killed", "cancel returned"]
    assert not _alive(child) and not _alive(job.process.pid)
    assert not work.exists()


def test_the_work_folder_is_removed_once_windows_lets_go_of_its_files(tmp_path, monkeypatch):
    """A file still open (a process not yet gone, a virus scanner) cannot be deleted on
    Windows: the removal retries, and says so when it gives up; the owner file goes last."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "fixed.nrrd").write_bytes(b"x" * 100)
    (work / "out" / "transform.nrrd").write_bytes(b"y")
    jobs.claim_work_dir(work, [os.getpid()])
    real_unlink, locked = Path.unlink, {"count": 3}

    def unlink(self, *args, **kw):
        if self.name == "fixed.nrrd" and locked["count"] > 0:
            locked["count"] -= 1
            raise PermissionError(32, "The process cannot access the file because it is being used by another process")
        return real_unlink(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert jobs.remove_tree(work, timeout_s=5.0, poll_s=0.01) and not work.exists() and locked["count"] == 0

    (work / "out").mkdir(parents=True)
    (work / "fixed.nrrd").write_bytes(b"x")
    jobs.claim_work_dir(work, [os.getpid()])
    locked["count"] = 10**9
    assert not jobs.remove_tree(work, timeout_s=0.05, poll_s=0.01)
    assert sorted(p.name for p in work.iterdir()) == [jobs.OWNER_FILE, "fixed.nrrd"]  # still says whose it is


def _ended_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("with_psutil", [True, False])
def test_a_process_runs_until_it_has_ended(monkeypatch, with_psutil):
    if not with_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert jobs.pid_running(os.getpid())
    assert not jobs.pid_running(_ended_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # ended, not reaped yet
    t0 = time.monotonic()
    while jobs.pid_running(zombie.pid) and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    assert not jobs.pid_running(zombie.pid)
    zombie.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not jobs.wait_for_exit([sleeper.pid], timeout_s=0.2)
        sleeper.kill()
        assert jobs.wait_for_exit([sleeper.pid], timeout_s=10.0)  # a zombie counts as ended
    finally:
        sleeper.kill()
        sleeper.wait()


class _Kernel32:
    """The three calls of the Win32 API that _windows_pid_running makes."""

    def __init__(self, handle, exit_code):
        self.handle, self.exit_code, self.closed = handle, exit_code, []

    def OpenProcess(self, access, inherit, pid):
        assert access == 0x1000  # PROCESS_QUERY_LIMITED_INFORMATION
        return self.handle

    def GetExitCodeProcess(self, handle, code):
        code._obj.value = self.exit_code
        return 1

    def CloseHandle(self, handle):
        self.closed.append(handle)


def test_a_process_runs_on_windows_while_its_exit_code_is_still_active():
    running = _Kernel32(7, 259)  # STILL_ACTIVE
    assert jobs._windows_pid_running(1234, running, lambda: 0) and running.closed == [7]
    assert not jobs._windows_pid_running(1234, _Kernel32(7, 0), lambda: 0)  # ended with exit code 0
    assert not jobs._windows_pid_running(1234, _Kernel32(0, 0), lambda: 87)  # ERROR_INVALID_PARAMETER: no such process
    assert jobs._windows_pid_running(1234, _Kernel32(0, 0), lambda: 5)  # ERROR_ACCESS_DENIED: another user's


def test_stale_work_folders_are_those_whose_processes_have_all_ended(tmp_path):
    """Left behind by a Slicer that ended during a run (or a file that stayed locked): removed at
    start-up once none of their processes runs; another Slicer's running job, the kept reports
    and other folders are left alone."""
    mine, gone = os.getpid(), _ended_pid()
    folders = {}
    for key, name, pids in (("ended", "ProgressiveRegistration-2026-01-01_10+00+00.000", [gone]),
                            ("running", "ProgressiveRegistration-2026-01-01_11+00+00.000", [gone, mine]),
                            ("old unowned", "ProgressiveRegistration-2026-01-01_12+00+00.000", None),
                            ("new unowned", "ProgressiveRegistration-2026-01-01_13+00+00.000", None),
                            ("reports", "ProgressiveRegistration reports", [gone]),
                            ("other", "Other-2026-01-01_10+00+00.000", [gone])):
        folder = tmp_path / name
        (folder / "out").mkdir(parents=True)
        (folder / "phase_0.nrrd").write_bytes(b"a full CT")
        if pids is not None:
            jobs.claim_work_dir(folder, pids)
        folders[key] = folder
    old = time.time() - jobs.UNOWNED_STALE_S - 60
    os.utime(folders["old unowned"], (old, old))
    (tmp_path / "ProgressiveRegistration-a file").write_text("not a folder", encoding="utf-8")
    stale = jobs.stale_work_dirs(tmp_path)
    assert stale == [folders["ended"], folders["old unowned"]]
    assert jobs.sweep_stale_work_dirs(tmp_path) == stale
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in folders.values() if f not in stale)
    assert (tmp_path / "ProgressiveRegistration-a file").is_file()


def test_a_job_claims_its_work_folder_for_slicer_and_the_child(tmp_path):
    work = tmp_path / "ProgressiveRegistration-2026-01-01_10+00+00.000"
    work.mkdir()
    job = jobs.BackgroundJob([sys.executable, "-c", "pass"], work_dir=work)
    owner = json.loads((work / jobs.OWNER_FILE).read_text(encoding="utf-8"))
    assert owner == {"pids": [os.getpid(), job.process.pid]}
    _wait(job, 60)
    assert jobs.stale_work_dirs(tmp_path) == []  # this process (Slicer) still runs
    assert jobs.stale_work_dirs(tmp_path, running=lambda pid: pid == job.process.pid and jobs.pid_running(pid)) == [work]


def test_the_child_writes_utf8_whatever_its_environment_says(tmp_path):
    """Python on Windows writes its pipes in the ANSI code page unless told otherwise; the job is
    read as UTF-8, so the child is told: PYTHONIOENCODING=utf-8 and PYTHONUTF8=1."""
    code = ("import os, sys\n"
            "print('Lunge – Ausatmung ✓ 肺', flush=True)\n"
            "print('Fehler: Datei „Phase 50 %“ fehlt', file=sys.stderr)\n"
            "print(sys.stdout.encoding, os.environ['PYTHONIOENCODING'], os.environ['PYTHONUTF8'], flush=True)")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0", "LC_ALL": "C"}
    job = jobs.BackgroundJob([sys.executable, "-c", code], env=env)
    lines = [line for p in _wait(job, 60) for line in p.log]
    assert job.error() is None, lines
    assert "Lunge – Ausatmung ✓ 肺" in lines and "Fehler: Datei „Phase 50 %“ fehlt" in lines
    assert "utf-8 utf-8 1" in lines
    assert env["PYTHONIOENCODING"] == "cp1252"  # the caller's dictionary is left as it was


@pytest.mark.parametrize("current, cuda, defaulted, device, note", [
    ("cpu", True, False, "cuda", "Device: cuda (torch sees a GPU)"),  # first run on a GPU machine
    ("cuda", True, False, "cuda", None),
    ("cpu", True, True, "cpu", None),  # cpu chosen after the default: it stays
    ("cuda", False, True, "cpu", "Device: cpu (cuda was chosen, but torch sees no GPU here)"),  # a saved scene
    ("cuda", False, False, "cpu", "Device: cpu"),
    ("cpu", False, False, "cpu", None),
])
def test_a_device_change_is_one_line_in_the_log(current, cuda, defaulted, device, note):
    got, line = jobs.default_device(current, cuda, defaulted)
    assert got == device
    assert (line is None) if note is None else line.startswith(note)


@pytest.mark.parametrize("current, cuda, defaulted, device", [
    ("cpu", None, False, "auto"),  # torch not imported in Slicer: the run takes cuda where it sees a GPU
    ("cpu", None, True, "cpu"),  # cpu chosen after cuda was the default: it stays
    ("cuda", None, False, "cuda"),  # chosen: passed as it is (the run falls back to the CPU with a notice)
    ("cpu", False, False, "cpu"),  # known: the panel's choice
    ("cuda", True, True, "cuda"),
])
def test_a_run_decides_the_device_where_slicer_has_not_imported_torch(current, cuda, defaulted, device):
    assert jobs.run_device(current, cuda, defaulted) == device


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
    from ProgressiveRegistrationLib.slicer import inprocess, mrml

    scene = slicer.vtkMRMLScene()
    fixed, moving, fpts, mpts = inprocess.sample_pair_nodes(scene)
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
                       "inverse_consistency.nrrd", "progreg.log"}
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
    from ProgressiveRegistrationLib.slicer import inprocess, mrml

    scene = slicer.vtkMRMLScene()
    fixed, moving, _, _ = inprocess.sample_pair_nodes(scene)
    export = mrml.export_job(scene, fixed, moving, tmp_path)
    r = subprocess.run([*export.command(sys.executable, tiny_model, refine=False)], cwd=MODULE_DIR,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    scene.RemoveNode(moving)
    n = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="removed from the scene"):
        mrml.load_results(scene, export)
    assert scene.GetNumberOfNodes() == n


def test_only_sequences_of_ct_volumes_are_phases():
    """The phases selector's check: the module's own outputs (ventilation maps are scalar volumes
    too), transforms and label maps are refused by name before anything is exported."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extras")
    from ProgressiveRegistrationLib.slicer.mrml4d import phase_nodes

    scene = slicer.vtkMRMLScene()

    def sequence(name, cls, n=2):
        seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        for k in range(n):
            seq.SetDataNodeAtValue(scene.AddNewNodeByClass(cls), str(k))
        return seq

    ct = sequence("4DCT", "vtkMRMLScalarVolumeNode")
    assert jobs.phases_problem(ct) is None
    ventilation = sequence("ventilation", "vtkMRMLScalarVolumeNode")
    ventilation.SetAttribute(jobs.OUTPUT_ATTRIBUTE, "ventilation_jacobian")
    problems = {
        "ventilation": jobs.phases_problem(ventilation),
        "transforms": jobs.phases_problem(sequence("transforms", "vtkMRMLGridTransformNode")),
        "labels": jobs.phases_problem(sequence("labels", "vtkMRMLLabelMapVolumeNode")),
        "empty": jobs.phases_problem(sequence("empty", "vtkMRMLScalarVolumeNode", 0)),
    }
    assert "output of this module" in problems["ventilation"]
    assert "vtkMRMLGridTransformNode" in problems["transforms"] and "not CT volumes" in problems["transforms"]
    assert "vtkMRMLLabelMapVolumeNode" in problems["labels"]
    assert "no phases" in problems["empty"]
    with pytest.raises(InputError, match="output of this module"):
        phase_nodes(ventilation)
