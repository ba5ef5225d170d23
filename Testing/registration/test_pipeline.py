"""Files in, files out: `progreg register` and `register_files` against independent references."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE, assert_bad_input, progreg

from ProgressiveRegistrationLib.io.landmarks import write_markups_json
from ProgressiveRegistrationLib.simulation.breathing import simulate


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
    assert names == {"transform.nrrd", "warped_moving.nrrd", "jacobian.nrrd", "tre.csv", "summary.json", "overview.png"}
    # Written through temporary files, yet readable like any file the user writes (not mkstemp's 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert {name: (out / name).stat().st_mode & 0o777 for name in names} == dict.fromkeys(names, 0o666 & ~umask)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["tre_after_mm"] == summary["tre_after_mm"]
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
    state = torch.load(tiny_model, weights_only=False)
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
    assert "warning" in r.stderr and "differ much in size" in r.stderr
    rng = np.random.default_rng(0)
    tissue = sitk.GetImageFromArray((40 + 10 * rng.standard_normal((40, 50, 50))).astype(np.int16))
    tissue.SetSpacing((8.0, 8.0, 8.0))  # and a spacing far from thorax CT
    sitk.WriteImage(tissue, str(tmp_path / "tissue.nrrd"))
    r = progreg("register", tmp_path / "tissue.nrrd", tmp_path / "tissue.nrrd", "--out", tmp_path / "o2", "--model", tiny_model)
    assert r.returncode == 0, r.stderr
    assert "no lung field found" in r.stderr and "spacing" in r.stderr
