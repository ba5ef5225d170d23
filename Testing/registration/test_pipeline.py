"""Files in, files out: `progreg register` and `register_files` against independent references."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import EXACT_RESTORINGS, MODULE_DIR, ROTATED_RESTORINGS, SAMPLE, assert_bad_input, flipped, permuted, progreg

from ProgressiveRegistrationLib.core.atomic import MANIFEST_NAME
from ProgressiveRegistrationLib.io.landmarks import write_markups_json
from ProgressiveRegistrationLib.simulation.breathing import simulate
from ProgressiveRegistrationLib.training.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The bundled CT (inhale) and a simulated exhale with exact landmark pairs."""
    d = tmp_path_factory.mktemp("pair")
    p = simulate(sitk.ReadImage(str(SAMPLE)), seed=1)
    sitk.WriteImage(p.inhale, str(d / "fixed.nrrd"))
    sitk.WriteImage(p.exhale, str(d / "moving.nrrd"))
    write_markups_json(d / "fixed.mrk.json", p.fixed_points_lps)
    write_markups_json(d / "moving.mrk.json", p.moving_points_lps)
    return d


def run_register(pair, out, *extra):
    return progreg("register", pair / "fixed.nrrd", pair / "moving.nrrd", "--out", out, "--fixed-landmarks",
                   pair / "fixed.mrk.json", "--moving-landmarks", pair / "moving.mrk.json", *extra)


def test_bundled_model_reduces_tre_and_outputs_agree(pair, tmp_path):
    out = tmp_path / "out"
    r = run_register(pair, out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tre_after_mm"]["mean"] < 0.7 * summary["tre_before_mm"]["mean"], summary
    assert summary["folding_percent"] < 1.0
    _check_outputs(pair, out, summary)


def test_outputs_are_valid_files(pair, tmp_path, tiny_model):
    out = tmp_path / "out"
    r = run_register(pair, out, "--model", tiny_model, "--json")
    assert r.returncode == 0, r.stderr
    _check_outputs(pair, out, json.loads(r.stdout))


def _check_outputs(pair, out, summary):
    names = {p.name for p in out.iterdir()}
    # and the one hidden file: the list of this run's outputs (a rerun removes what it does not write again)
    assert names == {"transform.nrrd", "warped_moving.nrrd", "jacobian.nrrd", "tre.csv", "summary.json", "overview.png",
                     "report.html", "quality.nrrd", "inverse_consistency.nrrd", "progreg.log", MANIFEST_NAME}
    # Written through temporary files, yet readable like any file the user writes (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert {name: (out / name).stat().st_mode & 0o777 for name in names} == dict.fromkeys(names, 0o666 & ~umask)
    written = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert written["tre_after_mm"] == summary["tre_after_mm"]
    # Each file's own writing time (the summary, written last, records the others').
    assert set(written["seconds_per_file"]) == names - {"summary.json", MANIFEST_NAME}
    assert all(v >= 0 for v in written["seconds_per_file"].values())
    for key in ("tre_before_mm", "tre_after_mm", "folding_percent", "seconds", "model", "device"):
        assert key in summary
    fixed = sitk.ReadImage(str(pair / "fixed.nrrd"))
    moving = sitk.ReadImage(str(pair / "moving.nrrd"))
    field = sitk.ReadImage(str(out / "transform.nrrd"))
    # The transform covers the fixed image, on a grid no coarser than... the fixed image's extent.
    fb = np.asarray(fixed.GetOrigin()) + (np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing())
    tb = np.asarray(field.GetOrigin()) + (np.asarray(field.GetSize()) - 1) * np.asarray(field.GetSpacing())
    assert np.all(tb >= fb - 1e-3)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, -1024.0, moving.GetPixelID())
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_moving.nrrd")))
    np.testing.assert_allclose(sitk.GetArrayFromImage(warped), ours, atol=1.0)
    jac = sitk.ReadImage(str(out / "jacobian.nrrd"))
    assert jac.GetSize() == field.GetSize() and jac.GetOrigin() == field.GetOrigin()
    with open(out / "tre.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    after = np.array([float(r["tre_after_mm"]) for r in rows])
    before = np.array([float(r["tre_before_mm"]) for r in rows])
    assert summary["tre_after_mm"]["mean"] == pytest.approx(after.mean(), abs=1e-3)
    assert summary["tre_after_mm"]["sd"] == pytest.approx(after.std(), abs=1e-3)
    assert summary["tre_before_mm"]["mean"] == pytest.approx(before.mean(), abs=1e-3)
    # TRE after recomputed from the transform file itself.
    f = np.array([[float(r[f"fixed_{a}"]) for a in "lps"] for r in rows])
    m = np.array([[float(r[f"moving_{a}"]) for a in "lps"] for r in rows])
    pred = np.array([tx.TransformPoint(p.tolist()) for p in f])
    np.testing.assert_allclose(np.linalg.norm(pred - m, axis=1), after, atol=1e-3)


@pytest.mark.parametrize("fmt", ["h5", "nii.gz"])
def test_other_transform_formats(pair, tmp_path, tiny_model, fmt):
    out = tmp_path / "o"
    r = run_register(pair, out, "--model", tiny_model, "--format", fmt, "--json")
    assert r.returncode == 0, r.stderr
    r2 = progreg("tre", pair / "fixed.mrk.json", pair / "moving.mrk.json", "--transform", out / f"transform.{fmt}", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["after_mm"]["mean"] == pytest.approx(json.loads(r.stdout)["tre_after_mm"]["mean"],
                                                                      abs=1e-3)


def test_cuda_request_falls_back_with_notice(pair, tmp_path, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run_register(pair, tmp_path / "o", "--model", tiny_model, "--device", "cuda")
    assert r.returncode == 0 and "CUDA is not available" in r.stderr


def test_bad_input(pair, tmp_path, tiny_model):
    fixed = sitk.ReadImage(str(pair / "fixed.nrrd"))
    far = sitk.Image(fixed)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    sitk.WriteImage(fixed[:, :, 10], str(tmp_path / "flat.nrrd"))
    nan = sitk.Cast(fixed, sitk.sitkFloat32)
    nan[5, 5, 5] = float("nan")
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    empty = sitk.Image(fixed.GetSize(), sitk.sitkInt16)
    empty.CopyInformation(fixed)
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04not a model")
    state = read_checkpoint(tiny_model)  # weights only: a model file holds plain containers and tensors
    state["version"] = 99
    torch.save(state, tmp_path / "future.pt")
    write_markups_json(tmp_path / "short.mrk.json", np.zeros((3, 3)))
    cases = [
        (tmp_path / "far.nrrd", []),
        (tmp_path / "flat.nrrd", []),
        (tmp_path / "nan.nrrd", []),
        (tmp_path / "empty.nrrd", []),
        (pair / "moving.nrrd", ["--model", tmp_path / "corrupt.pt"]),
        (pair / "moving.nrrd", ["--model", tmp_path / "future.pt"]),
        (pair / "moving.nrrd", ["--model", tmp_path / "missing.pt"]),
        (pair / "moving.nrrd", ["--fixed-landmarks", pair / "fixed.mrk.json", "--moving-landmarks", tmp_path / "short.mrk.json"]),
        (pair / "moving.nrrd", ["--fixed-landmarks", pair / "fixed.mrk.json"]),
    ]
    for i, (moving, extra) in enumerate(cases):
        out = tmp_path / f"out{i}"
        model = [] if "--model" in map(str, extra) else ["--model", tiny_model]
        assert_bad_input(progreg("register", pair / "fixed.nrrd", moving, "--out", out, *model, *map(str, extra)), out)


def test_python_function_of_the_same_shape(pair, tmp_path, tiny_model):
    from ProgressiveRegistrationLib.registration.pipeline import register_files

    summary = register_files(pair / "fixed.nrrd", pair / "moving.nrrd", tmp_path / "py", model=tiny_model)
    assert "tre_after_mm" not in summary and (tmp_path / "py" / "transform.nrrd").is_file()
    assert summary["grid"]["network_size"] == 32


def test_unusual_pairs_warn_but_run(pair, tmp_path, tiny_model):
    fixed = sitk.ReadImage(str(pair / "fixed.nrrd"))
    half = fixed[:, :, : fixed.GetSize()[2] // 3]  # a much shorter field of view
    sitk.WriteImage(half, str(tmp_path / "half.nrrd"))
    r = progreg("register", pair / "fixed.nrrd", tmp_path / "half.nrrd", "--out", tmp_path / "o1", "--model", tiny_model)
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "outside the moving image's field of view" in r.stderr
    # progreg.log: the run as it went (the command, the software, the progress and the warnings,
    # with the seconds since the start), and "done" is said once the outputs are written.
    log = (tmp_path / "o1" / "progreg.log").read_text(encoding="utf-8")
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text(encoding="utf-8"))
    assert log.startswith("ProgressiveRegistration ") and "progreg.log" in summary["files"]
    assert summary["command_line"][:3] == ["progreg", "register", str(pair / "fixed.nrrd")]  # not pytest's argv
    assert f"\ncommand: {' '.join(summary['command_line'])}\n" in log and "torch " in log and "device: cpu" in log
    assert "refinement levels (cells of each level, as run):\n  1. " in log
    timeline = [line for line in log.splitlines() if line.startswith("[")]
    seconds = [float(line[1:].split(" s]")[0]) for line in timeline]
    assert seconds == sorted(seconds) and any("WARNING" in line and "field of view" in line for line in timeline)
    assert any("PROGRESS" in line and "refining: level 1/" in line and "mm cells)" in line for line in timeline)
    assert f"warnings: {len(summary['warnings'])}\n" in log and summary["warnings"][0] in log
    assert "seconds per stage: crop " in log
    progress = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert progress[-2].startswith("[ 95%] writing") and progress[-1] == "[100%] done", progress[-3:]
    rng = np.random.default_rng(0)
    tissue = sitk.GetImageFromArray((40 + 10 * rng.standard_normal((40, 50, 50))).astype(np.int16))
    tissue.SetSpacing((8.0, 8.0, 8.0))  # and a spacing far from thorax CT
    sitk.WriteImage(tissue, str(tmp_path / "tissue.nrrd"))
    r = progreg("register", tmp_path / "tissue.nrrd", tmp_path / "tissue.nrrd", "--out", tmp_path / "o2", "--model", tiny_model)
    assert r.returncode == 0, r.stderr
    assert "no lung field found" in r.stderr and "spacing" in r.stderr


# --- orientation: a moving image stored another way gives the same registration -------------

@pytest.fixture(scope="module")
def demo_pair():
    """The demo's pair: the bundled CT and its simulated exhale (60 exact landmark pairs)."""
    return simulate(sitk.ReadImage(str(SAMPLE)), seed=0)


def _network_tre(fixed, moving, pair, model):
    from ProgressiveRegistrationLib.registration.engine import register_images

    r = register_images(fixed, moving, model, fixed_points_lps=pair.fixed_points_lps,
                        moving_points_lps=pair.moving_points_lps, refinement=None, warp_moving=False)
    return float(r.landmarks["after_mm"].mean()), r


def test_restored_images_give_the_same_network_field(demo_pair):
    """World-identical copies stored flipped or permuted, as moving or as fixed image: the
    network alone gives the same TRE (to 0.01 mm) and, between an image and its copy, the
    field it gives between the image and itself (to 0.05 mm in the body)."""
    from ProgressiveRegistrationLib.model.modelfile import load_model
    from ProgressiveRegistrationLib.registration.engine import register_images

    model = load_model(None)
    base, _ = _network_tre(demo_pair.inhale, demo_pair.exhale, demo_pair, model)
    itself = register_images(demo_pair.inhale, demo_pair.inhale, model, refinement=None, warp_moving=False)
    d_itself = sitk.GetArrayFromImage(itself.displacement)[itself.body_mask]
    # Every storage as the moving image; as the fixed image and as an image's copy, the two that
    # between them reverse or exchange every axis (each flip alone is the moving case's).
    for how, restore in EXACT_RESTORINGS.items():
        moved, _ = _network_tre(demo_pair.inhale, restore(demo_pair.exhale), demo_pair, model)
        assert abs(moved - base) < 0.01, (how, moved, base)
        if how not in ("NIfTI-like diag(-1,-1,1)", "sagittal storage"):
            continue
        fixed_moved, _ = _network_tre(restore(demo_pair.inhale), demo_pair.exhale, demo_pair, model)
        assert abs(fixed_moved - base) < 0.01, (how, fixed_moved, base)
        copy = register_images(demo_pair.inhale, restore(demo_pair.inhale), model, refinement=None, warp_moving=False)
        d_copy = sitk.GetArrayFromImage(copy.displacement)[copy.body_mask]
        assert np.linalg.norm(d_copy - d_itself, axis=-1).mean() < 0.05, how
    # Oblique storage (a B-spline resample of the same content): the same TRE within 0.3 mm.
    rotated_tre, _ = _network_tre(demo_pair.inhale, ROTATED_RESTORINGS["rotated 10° about L"](demo_pair.exhale),
                                  demo_pair, model)
    assert abs(rotated_tre - base) < 0.3, (rotated_tre, base)
    assert base < 2.6  # and the network does register (5.24 mm before)


def test_register_command_gives_the_same_refined_tre_for_a_restored_moving(demo_pair, tmp_path):
    """`progreg register` (refined) with the moving image as a NIfTI-like flipped file and as
    sagittal storage: the TRE of the original storage to 0.1 mm."""
    write_markups_json(tmp_path / "fixed.mrk.json", demo_pair.fixed_points_lps)
    write_markups_json(tmp_path / "moving.mrk.json", demo_pair.moving_points_lps)
    sitk.WriteImage(demo_pair.inhale, str(tmp_path / "fixed.nrrd"))
    moving = {"original.nrrd": demo_pair.exhale,
              "flipped.nii.gz": EXACT_RESTORINGS["NIfTI-like diag(-1,-1,1)"](demo_pair.exhale),
              "sagittal.nrrd": EXACT_RESTORINGS["sagittal storage"](demo_pair.exhale)}
    tre = {}
    for name, image in moving.items():
        sitk.WriteImage(image, str(tmp_path / name))
        r = progreg("register", tmp_path / "fixed.nrrd", tmp_path / name, "--out", tmp_path / f"out_{name}",
                    "--fixed-landmarks", tmp_path / "fixed.mrk.json", "--moving-landmarks", tmp_path / "moving.mrk.json",
                    "--json", "--no-warped", "--no-overview")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        tre[name] = (s["tre_network_mm"]["mean"], s["tre_after_mm"]["mean"])
    assert sitk.ReadImage(str(tmp_path / "flipped.nii.gz")).GetDirection() != demo_pair.exhale.GetDirection()
    for network, refined in tre.values():
        assert abs(network - tre["original.nrrd"][0]) < 0.01 and abs(refined - tre["original.nrrd"][1]) < 0.1, tre
    assert tre["original.nrrd"][1] < 1.0


def test_register_4d_follows_points_alike_through_a_restored_phase(demo_pair, tmp_path):
    """`register-4d` (network alone) with phases 1 and 2 the same exhale, phase 2 stored flipped and
    permuted: both carry the reference's points to the same places (0.1 mm) and change the lung
    volume alike. (Refined, the refinement's box averages follow each image's own axes.)"""
    sitk.WriteImage(demo_pair.inhale, str(tmp_path / "p0.nrrd"))
    sitk.WriteImage(demo_pair.exhale, str(tmp_path / "p1.nrrd"))
    sitk.WriteImage(permuted(flipped(demo_pair.exhale, 0), (1, 2, 0)), str(tmp_path / "p2.nii.gz"))
    write_markups_json(tmp_path / "points.mrk.json", demo_pair.fixed_points_lps[:20])
    out = tmp_path / "4d"
    r = progreg("register-4d", tmp_path / "p0.nrrd", tmp_path / "p1.nrrd", tmp_path / "p2.nii.gz", "--reference", 0,
                "--points", tmp_path / "points.mrk.json", "--out", out, "--no-refine")
    assert r.returncode == 0, r.stderr
    with open(out / "trajectories.csv", newline="") as fh:
        traj = list(csv.DictReader(fh))
    at = {(t["label"], int(t["phase"])): np.array([float(t["l"]), float(t["p"]), float(t["s"])]) for t in traj}
    labels = sorted({t["label"] for t in traj})
    gaps = [np.linalg.norm(at[(label, 1)] - at[(label, 2)]) for label in labels]
    moved = [np.linalg.norm(at[(label, 1)] - at[(label, 0)]) for label in labels]
    assert max(gaps) < 0.1 and np.mean(moved) > 2.0, (gaps, moved)
    with open(out / "phases.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert abs(float(rows[1]["volume_change_percent"]) - float(rows[2]["volume_change_percent"])) < 0.1


def test_the_command_line_names_progreg_when_run_as_a_module(monkeypatch):
    from ProgressiveRegistrationLib.registration.pipeline import command_line

    main = MODULE_DIR / "ProgressiveRegistrationLib" / "__main__.py"
    monkeypatch.setattr("sys.argv", [str(main), "demo", "--out", "x"])
    assert command_line() == ["progreg", "demo", "--out", "x"]
    monkeypatch.setattr("sys.argv", ["/home/me/my_study.py", "--fast"])
    assert command_line() == ["my_study.py", "--fast"]
