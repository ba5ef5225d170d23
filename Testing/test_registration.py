"""`progreg register` end to end: outputs valid for SimpleITK, consistent numbers, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import MODULE_DIR, SAMPLE

from ProgressiveRegistrationLib.breathing import simulate
from ProgressiveRegistrationLib.config import NetworkConfig
from ProgressiveRegistrationLib.landmarks import write_markups_json
from ProgressiveRegistrationLib.network import UNet
from ProgressiveRegistrationLib.registration import DEFAULT_MODEL, fold_batchnorm


def progreg(*args):
    return subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", *map(str, args)], cwd=MODULE_DIR,
                          capture_output=True, text=True, encoding="utf-8", timeout=600)


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


def test_batchnorm_folding_is_exact():
    torch.manual_seed(0)
    net = UNet(NetworkConfig(levels=3, base_channels=4))
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        ref = net.eval()(x)
        folded = fold_batchnorm(net)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4)


def _bad(r, out):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


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
        _bad(progreg("register", pair / "fixed.nrrd", moving, "--out", out, *model, *map(str, extra)), out)


class _Payload:
    """Unpickling this runs code: what a malicious model file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_cannot_run_code(tmp_path, tiny_model):
    from ProgressiveRegistrationLib.errors import InputError
    from ProgressiveRegistrationLib.registration import load_model

    state = torch.load(tiny_model, weights_only=True)
    marker = tmp_path / "ran"
    state["extra"] = _Payload(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not a readable model file"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    assert load_model(tiny_model).size == 32  # a plain model file still loads


def test_python_function_of_the_same_shape(pair, tmp_path, tiny_model):
    from ProgressiveRegistrationLib.registration import register_files

    summary = register_files(pair / "fixed.nrrd", pair / "moving.nrrd", tmp_path / "py", model=tiny_model)
    assert "tre_after_mm" not in summary and (tmp_path / "py" / "transform.nrrd").is_file()
    assert summary["grid"]["network_size"] == 32


def test_dirlab_registers_cases_whose_images_are_present(tmp_path, tiny_model):
    """A DIR-Lab-shaped case 1 (raw int16 images, 1-based voxel landmarks) made from the sample."""
    from ProgressiveRegistrationLib.dirlab import CASES

    case = CASES[1]
    ref = sitk.Image(list(case.size), sitk.sitkFloat32)
    ref.SetSpacing(case.spacing_mm)
    sample = sitk.ReadImage(str(SAMPLE))
    # Centre the sample in the case's field of view.
    shift = np.asarray(sample.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in sample.GetSize()])) - \
        (np.asarray(case.size) - 1) / 2 * np.asarray(case.spacing_mm)
    fixed = sitk.Resample(sample, ref, sitk.TranslationTransform(3, shift.tolist()), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    p = simulate(fixed, seed=2, n_landmarks=30)
    folder = tmp_path / "Case1Pack"
    (folder / "Images").mkdir(parents=True)
    (folder / "ExtremePhases").mkdir()
    for phase, image, points in (("T00", p.inhale, p.fixed_points_lps), ("T50", p.exhale, p.moving_points_lps)):
        sitk.GetArrayFromImage(image).astype("<i2").tofile(folder / "Images" / f"case1_{phase}_s.img")
        idx1 = points / np.asarray(case.spacing_mm) + 1.0
        (folder / "ExtremePhases" / f"Case1_300_{phase}_xyz.txt").write_text(
            "".join(f"{x:.4f}\t{y:.4f}\t{z:.4f}\r\n" for x, y, z in idx1))
    r = progreg("dirlab", tmp_path, "--cases", "1", "--json", "--model", tiny_model)
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["cases"]["1"]
    assert c["images"] and c["n"] == 30
    expected_before = np.linalg.norm(p.fixed_points_lps - p.moving_points_lps, axis=1).mean()
    assert c["before_mm"]["mean"] == pytest.approx(expected_before, abs=1e-3)
    assert {"after_mm", "after_snapped_mm", "folding_percent"} <= set(c)
    if DEFAULT_MODEL.is_file():
        r = progreg("dirlab", tmp_path, "--cases", "1", "--json")
        c = json.loads(r.stdout)["cases"]["1"]
        assert c["after_mm"]["mean"] < c["before_mm"]["mean"], c


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


def test_overview_slice_equals_the_slice_of_a_full_resample():
    """The overview figure resamples only the slice it shows; it must be that slice of the
    whole-volume resample (rotated, anisotropic target grid)."""
    from ProgressiveRegistrationLib.geometry import Grid
    from ProgressiveRegistrationLib.plots import _coronal_on

    image = sitk.ReadImage(str(SAMPLE))
    c, s = np.cos(0.3), np.sin(0.3)
    grid = Grid((40, 30, 20), (3.0, 2.5, 4.0), tuple(np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [10.0, 12.0, 3.0]))), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    full = sitk.GetArrayFromImage(sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear,
                                                -1024.0, sitk.sitkFloat32))
    for j in (0, 17, 29):
        np.testing.assert_allclose(_coronal_on(image, grid, j), full[:, j, :], atol=1e-3)
