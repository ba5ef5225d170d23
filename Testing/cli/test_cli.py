"""The command line as a user meets it: subcommands' values, and bad input as one error line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_bad_input, progreg

from ProgressiveRegistrationLib.io import landmarks


def test_tre_cli_with_transform(dirlab_root, tmp_path):
    fixed = dirlab_root / "Case1Pack" / "ExtremePhases" / "Case1_300_T00_xyz.txt"
    moving = dirlab_root / "Case1Pack" / "ExtremePhases" / "Case1_300_T50_xyz.txt"
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before_mm"]["mean"] == pytest.approx(3.89, abs=0.01) and "after_mm" not in out
    # A pure translation that moves every fixed point by the mean offset: TRE after = spread around it.
    f = landmarks.read_landmarks(fixed).to_lps(spacing_mm=(0.97, 0.97, 2.5))
    m = landmarks.read_landmarks(moving).to_lps(spacing_mm=(0.97, 0.97, 2.5))
    shift = (m - f).mean(0)
    tx = sitk.TranslationTransform(3, shift.tolist())
    sitk.WriteTransform(tx, str(tmp_path / "shift.tfm"))
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--transform", tmp_path / "shift.tfm", "--json")
    out = json.loads(r.stdout)
    expect = np.linalg.norm(f + shift - m, axis=1)
    assert out["after_mm"]["mean"] == pytest.approx(expect.mean(), abs=1e-6)
    # --snap rounds each prediction to its nearest voxel centre (the DIR-Lab leaderboard rule).
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--transform", tmp_path / "shift.tfm", "--snap",
                "--json")
    spacing = np.array([0.97, 0.97, 2.5])
    snapped = np.round((f + shift) / spacing) * spacing
    expect = np.linalg.norm(snapped - m, axis=1)
    assert json.loads(r.stdout)["after_mm"]["mean"] == pytest.approx(expect.mean(), abs=1e-6)
    assert abs(expect.mean() - np.linalg.norm(f + shift - m, axis=1).mean()) > 1e-3  # snapping changed something


def test_bad_input_is_one_error_line_and_exit_2(tmp_path):
    img2d = sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32))
    sitk.WriteImage(img2d, str(tmp_path / "flat.nrrd"))
    img4d = sitk.GetImageFromArray(np.random.rand(3, 4, 5, 6).astype(np.float32))
    sitk.WriteImage(img4d, str(tmp_path / "four.nii.gz"))
    nan = np.random.rand(10, 10, 10).astype(np.float32)
    nan[5, 5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nrrd"))
    (tmp_path / "junk.nrrd").write_text("not an image", encoding="utf-8")
    (tmp_path / "empty_dicom").mkdir()
    for image in ("flat.nrrd", "four.nii.gz", "nan.nrrd", "junk.nrrd", "missing.nii.gz", "empty_dicom"):
        out = tmp_path / f"out_{image}"
        assert_bad_input(progreg("synth", tmp_path / image, "--out", out, "--size", 16), out)
    # The same in a new process, as a user meets it: nothing printed at start-up either.
    out = tmp_path / "out_new_process"
    assert_bad_input(progreg("synth", tmp_path / "junk.nrrd", "--out", out, "--size", 16, new_process=True), out)
    (tmp_path / "a.txt").write_text("1 2 3\n4 5 6\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("1 2 3\n", encoding="utf-8")
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "b.txt", "--spacing", 1, 1, 1))
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "nope.txt", "--spacing", 1, 1, 1))
    assert_bad_input(progreg("tre", tmp_path / "a.txt", tmp_path / "a.txt"))  # voxel files need --spacing
    assert_bad_input(progreg("dirlab", tmp_path / "nowhere"))


# --- answers that must not be given silently, and folders on real file systems -------------

@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """The bundled CT and its simulated exhale as files, 30 landmark pairs."""
    from conftest import SAMPLE

    from ProgressiveRegistrationLib.simulation.breathing import simulate

    d = tmp_path_factory.mktemp("pair")
    p = simulate(sitk.ReadImage(str(SAMPLE)), seed=2, n_landmarks=30)
    sitk.WriteImage(p.inhale, str(d / "fixed.nrrd"))
    sitk.WriteImage(p.exhale, str(d / "moving.nrrd"))
    landmarks.write_markups_json(d / "fixed.mrk.json", p.fixed_points_lps)
    landmarks.write_markups_json(d / "moving.mrk.json", p.moving_points_lps)
    return d, p


def _register(d, out, *extra):
    return progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", out, *extra)


def _tiny_state(tiny_model):
    import torch

    return torch.load(tiny_model, weights_only=True)


def test_a_model_with_nan_weights_is_refused(small_pair, tiny_model, tmp_path):
    import torch

    state = _tiny_state(tiny_model)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    state["state_dict"][key][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    r = _register(small_pair[0], tmp_path / "out", "--model", tmp_path / "nan.pt", "--no-refine")
    assert_bad_input(r, tmp_path / "out")
    assert "NaN" in r.stderr and not (tmp_path / "out").exists()


def test_non_finite_fields_are_refused_not_reported_as_fine(small_pair, tiny_model):
    """A network that gives NaN (weights fine, output not: an overflow) is one clear error."""
    from ProgressiveRegistrationLib.core.errors import InputError
    from ProgressiveRegistrationLib.model.modelfile import load_model
    from ProgressiveRegistrationLib.registration.engine import register_images

    model = load_model(tiny_model)
    model.net.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(InputError, match="non-finite"):
        register_images(small_pair[1].inhale, small_pair[1].exhale, model, refinement=None)


def test_foreign_and_mismatched_model_files_are_one_plain_line(small_pair, tiny_model, tmp_path):
    import torch

    (tmp_path / "text.pt").write_text("not a model\n")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    state = _tiny_state(tiny_model)
    key = next(k for k, v in state["state_dict"].items() if v.dim() == 5)
    state["state_dict"][key] = state["state_dict"][key][:1]
    torch.save(state, tmp_path / "shape.pt")
    for name, says in (("text.pt", "not a progreg model file"), ("random.pt", "not a progreg model file"),
                       ("shape.pt", "do not fit")):
        r = _register(small_pair[0], tmp_path / "out", "--model", tmp_path / name)
        assert_bad_input(r, tmp_path / "out")
        assert says in r.stderr and "weights_only" not in r.stderr and "\x1b[" not in r.stderr, r.stderr


def test_landmarks_outside_the_images_are_named_and_left_out(small_pair, tiny_model, tmp_path):
    d, p = small_pair
    fixed, moving = p.fixed_points_lps.copy(), p.moving_points_lps.copy()
    far = [3, 7, 11, 19, 23]
    fixed[far] += 5000.0
    moving[far] += 5000.0
    landmarks.write_markups_json(tmp_path / "f.mrk.json", fixed)
    landmarks.write_markups_json(tmp_path / "m.mrk.json", moving)
    out = tmp_path / "out"
    r = _register(d, out, "--fixed-landmarks", tmp_path / "f.mrk.json", "--moving-landmarks", tmp_path / "m.mrk.json",
                  "--model", tiny_model, "--no-refine", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["tre_before_mm"]["n"] == 25 and s["landmarks"] == {"pairs": 30, "used": 25,
                                                                "outside_images": [i + 1 for i in far]}
    assert "5 of 30 pairs lie outside" in r.stderr and "4, 8, 12, 20, 24" in r.stderr
    inside = np.setdiff1d(np.arange(30), far)
    assert s["tre_before_mm"]["mean"] == pytest.approx(np.linalg.norm(fixed - moving, axis=1)[inside].mean(), abs=1e-3)
    import csv

    with open(out / "tre.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["in_statistics"]) for row in rows] == [0 if i in far else 1 for i in range(30)]


def test_output_folder_problems_are_found_before_any_work(small_pair, tiny_model, tmp_path):
    d = small_pair[0]
    (tmp_path / "a_file").write_text("mine")
    for out, says in (("", "empty path"), (tmp_path / "a_file", "is a file"),
                      (tmp_path / "a_file" / "sub", "cannot write there")):
        r = _register(d, out, "--model", tiny_model)
        assert_bad_input(r)
        assert says in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "a_file").read_text() == "mine"
    from ProgressiveRegistrationLib.core.atomic import OutputFolder

    with OutputFolder(tmp_path / "busy"):  # another run holds the folder
        r = _register(d, tmp_path / "busy", "--model", tiny_model, "--no-refine")
    assert_bad_input(r)
    assert "another progreg run" in r.stderr


def test_a_reused_folder_keeps_only_the_new_runs_outputs(small_pair, tiny_model, tmp_path):
    d, out = small_pair[0], tmp_path / "out"
    assert _register(d, out, "--model", tiny_model, "--no-refine", "--fixed-landmarks", d / "fixed.mrk.json",
                     "--moving-landmarks", d / "moving.mrk.json").returncode == 0
    (out / "my_notes.txt").write_text("mine")
    r = _register(d, out, "--model", tiny_model, "--no-refine", "--format", "nii.gz", "--no-warped", "--no-overview",
                  "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([*files, "my_notes.txt"])
    assert not (out / "tre.csv").exists() and not (out / "transform.nrrd").exists()


def test_sigterm_leaves_no_staging_and_no_partial_output(small_pair, tiny_model, tmp_path):
    """SIGTERM (Slicer's Cancel, a scheduler) is handled like Ctrl-C: the run stops, exit 143,
    nothing half-written, no hidden staging folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import MODULE_DIR

    d, out = small_pair[0], tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ProgressiveRegistrationLib", "register", d / "fixed.nrrd",
                             d / "moving.nrrd", "--out", out, "--model", tiny_model, "--progress-json"],
                            cwd=MODULE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until the refinement runs: well inside the work
        if "refining" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_a_termination_swallowed_by_a_callback_from_c_is_raised_at_the_next_progress_report(monkeypatch):
    """Python drops an exception raised inside a callback from C (numba's compiler calls back into
    Python while it loads its kernels): a SIGTERM handled there must still stop the run."""
    import ctypes
    import os
    import signal
    import sys

    from ProgressiveRegistrationLib.cli.common import TERMINATION, Terminated, progress_printer, terminate

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)
    before = signal.signal(signal.SIGTERM, terminate)
    TERMINATION.clear()
    try:
        ctypes.CFUNCTYPE(None)(lambda: os.kill(os.getpid(), signal.SIGTERM))()
        assert [type(u.exc_value) for u in swallowed] == [Terminated]  # lost on its way back through C
        with pytest.raises(Terminated):
            progress_printer(False)(0.5, "refining")
    finally:
        signal.signal(signal.SIGTERM, before)
        TERMINATION.clear()


def test_train_settings_and_folders_are_checked(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    assert_bad_input(progreg("train", "--smoke", "--out", tmp_path / "a_file"))
    r = progreg("train", "--smoke", "--out", tmp_path / "run", "--set", "train.device=quantum")
    assert_bad_input(r, tmp_path / "run")
    assert "train.device" in r.stderr


# --- the device -----------------------------------------------------------------------------

def test_device_defaults_to_auto_for_every_registering_command():
    from ProgressiveRegistrationLib.cli import build_parser

    for command in (["register", "f.nrrd", "m.nrrd", "--out", "o"], ["register-4d", "a.nrrd", "--out", "o"],
                    ["demo"], ["dirlab", "d"]):
        assert build_parser().parse_args(command).device == "auto", command


def test_cuda_without_a_gpu_is_one_notice_and_the_cpu_result(small_pair, tiny_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda runs there")
    d = small_pair[0]
    fast = ("--model", tiny_model, "--refine-levels", "8,4", "--refine-iterations", "15", "--json", "--no-warped", "--no-report",
            "--no-overview", "--fixed-landmarks", d / "fixed.mrk.json",
            "--moving-landmarks", d / "moving.mrk.json")
    runs = {device: _register(d, tmp_path / device, "--device", device, *fast) for device in ("cpu", "cuda", "auto")}
    for device, r in runs.items():
        assert r.returncode == 0, (device, r.stderr)
    assert runs["cuda"].stderr.count("CUDA is not available") == 1, runs["cuda"].stderr
    assert "CUDA" not in runs["cpu"].stderr and "CUDA" not in runs["auto"].stderr  # auto: no notice
    summaries = {device: json.loads(r.stdout) for device, r in runs.items()}
    assert {s["device"] for s in summaries.values()} == {"cpu"}
    assert summaries["cpu"]["refinement"] is not None
    cpu = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cpu" / "transform.nrrd")))
    for device in ("cuda", "auto"):
        other = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / device / "transform.nrrd")))
        assert np.array_equal(cpu, other), device
        assert summaries[device]["tre_after_mm"] == summaries["cpu"]["tre_after_mm"]


# --- outputs that cannot be written where asked: one line, nothing outside --out ----------------

def _fail_under(monkeypatch, root, code):
    """Creating a file or folder under ``root`` fails with ``code`` as the kernel says it (a
    read-only file system, no permission), whoever runs the test (root too)."""
    import os

    root = os.path.abspath(root)
    real_open, real_mkdir = os.open, os.mkdir

    def check(path):
        path = os.path.abspath(os.fsdecode(path))
        if path == root or path.startswith(root + os.sep):
            raise OSError(code, os.strerror(code), path)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            check(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        check(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_register_4d_refuses_a_phase_folder_linked_from_elsewhere(tmp_path):
    for k in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32)), str(tmp_path / f"phase{k}.nrrd"))
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "transform.nrrd").write_text("the user's own")
    (out / "phase_1").symlink_to(elsewhere, target_is_directory=True)
    r = progreg("register-4d", tmp_path / "phase0.nrrd", tmp_path / "phase1.nrrd", "--out", out)
    assert_bad_input(r)
    assert "phase_1 is a symbolic link to" in r.stderr and str(elsewhere.resolve()) in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["phase_1"]
    assert [p.name for p in elsewhere.iterdir()] == ["transform.nrrd"]
    assert (elsewhere / "transform.nrrd").read_text() == "the user's own"


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """ITK reports a full disk as a RuntimeError without the errno: with no space left, it is one."""
    import shutil

    def itk_full(image, path, *args):
        with open(path, "wb") as f:
            f.write(b"half an image")
        raise RuntimeError(f"ITK ERROR: ImageFileWriter: Could not write {path}")

    monkeypatch.setattr(sitk, "WriteImage", itk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 << 30, 100 << 30, 0))
    from conftest import SAMPLE

    out = tmp_path / "out"
    r = progreg("synth", SAMPLE, "--out", out, "--size", 16)
    assert_bad_input(r, out)
    assert "no space left on device while writing" in r.stderr and str(out) in r.stderr and "staging" not in r.stderr
    assert "Traceback" not in r.stderr and not out.exists() and list(tmp_path.iterdir()) == []


def test_train_into_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    import errno

    read_only = tmp_path / "mount"
    read_only.mkdir()
    _fail_under(monkeypatch, read_only, errno.EROFS)
    for out in (read_only, read_only / "run"):
        r = progreg("train", "--smoke", "--quiet", "--out", out)
        assert_bad_input(r, read_only)
        assert f"--out {out}: cannot write there (read-only file system)" in r.stderr, r.stderr
    assert list(read_only.iterdir()) == []


def test_train_into_a_folder_without_permission_is_one_line(tmp_path):
    import os

    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        pytest.skip("root writes into a folder without write permission (the read-only test above runs everywhere)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        r = progreg("train", "--smoke", "--quiet", "--out", locked / "run")
    finally:
        locked.chmod(0o755)
    assert_bad_input(r, locked)
    assert "cannot write there (permission denied)" in r.stderr


def test_a_permission_error_anywhere_in_a_command_is_one_line_naming_the_path(tmp_path, monkeypatch):
    import errno

    from ProgressiveRegistrationLib.cli import data

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "pair.json"))

    monkeypatch.setattr(data, "cmd_synth", denied)
    r = progreg("synth", "x.nrrd", "--out", tmp_path / "out")
    assert_bad_input(r)
    assert f"cannot write to {tmp_path / 'out' / 'pair.json'}: permission denied" in r.stderr

    def other(args):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(data, "cmd_synth", other)
    with pytest.raises(ConnectionRefusedError):  # not a write: not said as one
        progreg("synth", "x.nrrd", "--out", tmp_path / "out")


@pytest.mark.parametrize("argv", [["--verbose", "phantom", "--out", "x"], ["phantom", "--out", "x", "--verbose"],
                                  ["register", "f.nrrd", "--verbose", "m.nrrd", "--out", "o"]])
def test_verbose_is_taken_before_and_after_the_subcommand(argv):
    from ProgressiveRegistrationLib.cli import build_parser

    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args([a for a in argv if a != "--verbose"]).verbose is False


def test_the_parser_loads_no_engine_and_every_handler_resolves():
    """`progreg --help` and a bad argument answer without loading torch, numba or the readers:
    each subcommand's handler is imported when it runs, by name (and every name resolves)."""
    import subprocess
    import sys

    from conftest import MODULE_DIR

    from ProgressiveRegistrationLib.cli import build_parser, handler_of

    code = ("import sys\nfrom ProgressiveRegistrationLib.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'numba', 'matplotlib', 'SimpleITK', 'distributed') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert callable(handler_of(parser.get_default("func"))), name


def test_every_default_is_stated_in_the_help():
    """Each option that has a default says it in --help (the refinement's levels say how they run)."""
    import argparse

    from ProgressiveRegistrationLib.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = []
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
                continue
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            if f"default {shown}" not in text and f"default: {shown}" not in text:
                missing.append(f"{name} {action.option_strings[0]} ({shown})")
    assert missing == []
    register = " ".join(sub.choices["register"].format_help().split())
    assert "DIR-Lab .txt (1-based voxel indices" in register and "'2' runs on 1.37 mm cells" in register
