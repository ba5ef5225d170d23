"""4DCT: every phase to a reference, on a 4D phantom with exact truth (the breathing
simulator at several amplitudes): motion, lung volume, contours, inverse fields."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import assert_bad_input, progreg, write_dicom_series

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image, field_transform
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
from ProgressiveRegistrationLib.core.transforms import invert_displacement
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.fourd import register_phases
from ProgressiveRegistrationLib.registration.pipeline import read_phases
from ProgressiveRegistrationLib.registration.refine_config import RefineConfig
from ProgressiveRegistrationLib.simulation.breathing import simulate
from ProgressiveRegistrationLib.simulation.phantom import generate

AMPLITUDES_MM = (10.0, 20.0)  # diaphragm motion of phases 1 and 2; phase 0 is the reference (inhale)


def _ball(image: sitk.Image, centre_lps: np.ndarray, radius_mm: float) -> sitk.Image:
    g = Grid.from_image(image)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g.size], indexing="ij"), -1).reshape(-1, 3)
    inside = np.linalg.norm(g.points_to_lps(idx) - centre_lps, axis=1) <= radius_mm
    labels = sitk.GetImageFromArray(inside.reshape(g.size).transpose(2, 1, 0).astype(np.uint8) * 3)
    return g.apply_to(labels)


@pytest.fixture(scope="module")
def phantom4d():
    ph = generate(11, (144, 120, 100), (2.2, 2.2, 2.6))
    pairs = [simulate(ph.image, seed=k, amplitude_si_mm=a, amplitude_ap_mm=a / 3,
                      fixed_landmarks_lps=ph.bifurcations_lps) for k, a in enumerate(AMPLITUDES_MM, 1)]
    # A "tumour" in the lower lung, where the motion is largest.
    lungs = sitk.GetArrayFromImage(thorax_masks(ph.image).lungs)
    points = ph.bifurcations_lps
    low = points[np.argsort(points[:, 2])[len(points) // 5]]
    tumour = _ball(ph.image, low, 12.0)
    result = register_phases([ph.image] + [p.exhale for p in pairs], 0, load_model(), "cpu", RefineConfig(),
                             points_lps=points, labels=tumour)
    assert lungs.any()
    return ph, pairs, tumour, result


def test_trajectories_equal_the_truth_within_the_registration_error(phantom4d):
    ph, pairs, _, result = phantom4d
    np.testing.assert_array_equal(result.phases[0].points_lps, ph.bifurcations_lps)  # the reference: no motion
    for pair, phase in zip(pairs, result.phases[1:]):
        before = np.linalg.norm(pair.moving_points_lps - pair.fixed_points_lps, axis=1)
        error = np.linalg.norm(phase.points_lps - pair.moving_points_lps, axis=1)
        assert error.mean() < 1.0 and error.mean() < 0.25 * before.mean(), (error.mean(), before.mean())


def test_lung_volume_change_from_the_jacobian_is_the_simulators(phantom4d):
    ph, pairs, _, result = phantom4d
    # Exact: the reference lung's voxels x go to φ(x) = y with y + w(y) = x (the simulator
    # solves it for given points), and det Dφ(x) = 1 / det(I + Dw)(y).
    grid = Grid.from_image(ph.image)
    lungs = mask_on(thorax_masks(ph.image).lungs, result.grid)
    assert np.array_equal(lungs, result.lungs)
    x = result.grid.points_to_lps(np.argwhere(lungs)[:, ::-1].astype(float))
    for k, (a, phase) in enumerate(zip(AMPLITUDES_MM, result.phases[1:]), 1):
        truth = simulate(ph.image, seed=k, amplitude_si_mm=a, amplitude_ap_mm=a / 3, fixed_landmarks_lps=x)
        w = torch.from_numpy(truth.field_lps).movedim(-1, 0).double()
        det_w = fields.jacobian_determinant(w, grid.index_to_lps[:3, :3]).double()
        at_y = fields.sample(det_w[None], torch.from_numpy(grid.points_to_index(truth.moving_points_lps).T.copy()))[0]
        exact_percent = 100.0 * float((1.0 / at_y).mean() - 1.0)
        assert exact_percent < -2.0  # exhale: the lungs shrink
        assert phase.volume["change_percent"] == pytest.approx(exact_percent, rel=0.05), (a, exact_percent)
        # The Jacobian ventilation map is det J − 1 in the lungs, and it averages to the volume change.
        assert 100 * phase.ventilation_jacobian[lungs].mean() == pytest.approx(phase.volume["change_percent"], rel=1e-4)
        assert not phase.ventilation_jacobian[~lungs].any()
        # The density method agrees in sign and in rough size (it sees the phantom's HU, not its motion).
        assert np.sign(phase.ventilation_hu[lungs].mean()) == -1


def test_propagated_label_matches_the_exactly_warped_label(phantom4d):
    ph, pairs, tumour, result = phantom4d
    assert result.phases[0].labels is tumour
    for pair, phase in zip(pairs, result.phases[1:]):
        # Exact: exhale(y) = inhale(y + w(y)), so the label in the exhale phase is label(y + w(y)).
        grid = Grid.from_image(ph.image)
        w_vox = np.einsum("ab,kjib->akji", np.linalg.inv(grid.index_to_lps[:3, :3]), pair.field_lps)
        exact = fields.warp(torch.from_numpy(sitk.GetArrayFromImage(tumour)).float(),
                            torch.from_numpy(w_vox.astype(np.float32)), mode="nearest").numpy() > 0
        moved = sitk.GetArrayFromImage(phase.labels) > 0
        dice = 2 * (exact & moved).sum() / (exact.sum() + moved.sum())
        assert dice > 0.85, dice
        assert set(np.unique(sitk.GetArrayFromImage(phase.labels))) == {0, 3}  # labels kept, not interpolated
        assert phase.inverse["mean_mm"] < 0.05


def test_inverse_of_a_smooth_field_is_consistent():
    grid = Grid((40, 36, 30), (2.0, 2.0, 2.5), (-40.0, -30.0, 10.0))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size[::-1]], indexing="ij"), -1)[..., ::-1]
    x = grid.points_to_lps(idx.reshape(-1, 3)).reshape(*grid.shape_zyx, 3)
    d = np.stack([4.0 * np.sin(x[..., 2] / 15.0), 3.0 * np.cos(x[..., 0] / 20.0), 5.0 * np.sin(x[..., 1] / 18.0)], -1)
    disp = displacement_image(d, grid)
    inner = Grid((20, 18, 15), grid.spacing_mm, tuple(np.asarray(grid.origin_lps) + 20.0))  # away from the border
    inverse, record = invert_displacement(disp, inner)
    assert record["max_mm"] < 0.1 and record["iterations"] < 50
    # φ(φ⁻¹(y)) = y through ITK's own transforms, independently of the iteration's interpolation.
    forward, backward = field_transform(disp), field_transform(inverse)
    y = inner.points_to_lps(np.array([[3.0, 4.0, 5.0], [10.5, 2.0, 7.25], [15.0, 15.0, 12.0]]))
    back = np.array([forward.TransformPoint(backward.TransformPoint(p.tolist())) for p in y])
    assert np.abs(back - y).max() < 0.1


def test_a_dicom_folder_with_several_series_expands_in_phase_order(tmp_path):
    folder = tmp_path / "4dct"
    for uid, description in (("1.2.3.7", "Lung 4D T50"), ("1.2.3.1", "Lung 4D T00"), ("1.2.3.5", "Lung 4D T20")):
        write_dicom_series(folder, uid, description)
    images, names, order = read_phases([folder])
    assert names == ["Lung 4D T00", "Lung 4D T20", "Lung 4D T50"] and "phase % in the series description" in order
    r = progreg("series", folder)
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ["0", "1", "2"] and "T00" in r.stdout.splitlines()[1]
    # No phase in the descriptions: the Temporal Position Index decides.
    other = tmp_path / "by_index"
    written = {index: write_dicom_series(other, uid, "Lung 4D", extra=(("0020|0100", index),))
               for uid, index in (("1.2.4.1", "3"), ("1.2.4.2", "1"), ("1.2.4.3", "2"))}
    images, names, order = read_phases([other])
    assert "Temporal Position Index" in order
    # The same description for every series: the phase tag tells them apart (never the UID).
    assert names == ["Lung 4D (temporal position 1)", "Lung 4D (temporal position 2)", "Lung 4D (temporal position 3)"]
    for image, index in zip(images, ("1", "2", "3")):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), written[index])
    with pytest.raises(InputError, match="different patients"):
        write_dicom_series(tmp_path / "mixed", "1.2.5.1", "T00", patient="A")
        write_dicom_series(tmp_path / "mixed", "1.2.5.2", "T50", patient="B")
        read_phases([tmp_path / "mixed"])


@pytest.fixture(scope="module")
def small_phases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phases")
    ph = generate(3, (64, 56, 48), (3.0, 3.0, 3.5))
    sitk.WriteImage(ph.image, str(folder / "p0.nrrd"))
    for k, a in ((1, 8.0), (2, 16.0)):
        sitk.WriteImage(simulate(ph.image, seed=k, amplitude_si_mm=a).exhale, str(folder / f"p{k}.nrrd"))
    from ProgressiveRegistrationLib.io.landmarks import write_markups_json

    write_markups_json(folder / "points.mrk.json", ph.bifurcations_lps[:10])
    sitk.WriteImage(_ball(ph.image, ph.bifurcations_lps[0], 8.0), str(folder / "tumour.nrrd"))
    return folder


def test_register_4d_command_writes_every_output(small_phases, tmp_path, tiny_model):
    f = small_phases
    out = tmp_path / "out"
    r = progreg("register-4d", f / "p0.nrrd", f / "p1.nrrd", f / "p2.nrrd", "--reference", 1, "--out", out,
                "--points", f / "points.mrk.json", "--segmentation", f / "tumour.nrrd", "--segmentation-phase", 0,
                "--model", tiny_model, "--no-refine", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["reference"] == 1 and len(summary["phases"]) == 3
    assert json.loads((out / "summary.json").read_text())["phases"] == summary["phases"]
    with open(out / "phases.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(row["reference"]) for row in rows] == [0, 1, 0]
    assert [float(row["volume_change_percent"]) for row in rows] == [p["volume_change_percent"] for p in summary["phases"]]
    for k in range(3):
        for name in ("transform.nrrd", "jacobian.nrrd", "ventilation_jacobian.nrrd", "ventilation_hu.nrrd",
                     "segmentation.nrrd", "summary.json"):
            assert (out / f"phase_{k}" / name).is_file(), (k, name)
    # The segmentation was drawn on phase 0: written there unchanged, carried to the others.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "phase_0" / "segmentation.nrrd"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(f / "tumour.nrrd"))))
    # Each phase's transform maps the reference's points to the trajectory's positions.
    with open(out / "trajectories.csv", newline="") as fh:
        traj = list(csv.DictReader(fh))
    points = {(t["label"], int(t["phase"])): np.array([float(t["l"]), float(t["p"]), float(t["s"])]) for t in traj}
    tx = field_transform(sitk.ReadImage(str(out / "phase_2" / "transform.nrrd")))
    labels = list(dict.fromkeys(t["label"] for t in traj))
    assert len(labels) == 10 and len(traj) == 30
    for label in labels[:3]:
        assert np.allclose(tx.TransformPoint(points[(label, 1)].tolist()), points[(label, 2)], atol=1e-3)
    assert (out / "phases.png").stat().st_size > 10_000


def test_bad_4d_input_is_one_error_and_nothing_written(small_phases, tmp_path, tiny_model):
    f = small_phases
    out = tmp_path / "out"
    assert_bad_input(progreg("register-4d", f / "p0.nrrd", "--out", out, "--model", tiny_model), out)
    assert_bad_input(progreg("register-4d", f / "p0.nrrd", f / "p1.nrrd", "--reference", 2, "--out", out,
                             "--model", tiny_model), out)
    small = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    small[5, 5, 5] = 1
    sitk.WriteImage(small, str(tmp_path / "other_grid.nrrd"))
    assert_bad_input(progreg("register-4d", f / "p0.nrrd", f / "p1.nrrd", "--segmentation", tmp_path / "other_grid.nrrd",
                             "--out", out, "--model", tiny_model), out)
    for uid, patient in (("1.2.6.1", "A"), ("1.2.6.2", "B")):
        write_dicom_series(tmp_path / "mixed", uid, f"T{uid[-1]}0", patient=patient)
    assert_bad_input(progreg("register-4d", tmp_path / "mixed", "--out", out, "--model", tiny_model), out)
    assert not out.exists()


def test_register_writes_the_moving_segmentation_on_the_fixed_grid(small_phases, tmp_path, tiny_model):
    f = small_phases
    out = tmp_path / "pair"
    r = progreg("register", f / "p0.nrrd", f / "p1.nrrd", "--out", out, "--model", tiny_model, "--no-refine",
                "--moving-segmentation", f / "tumour.nrrd", "--no-overview", "--no-warped")
    assert r.returncode == 0, r.stderr
    written = sitk.ReadImage(str(out / "moving_segmentation.nrrd"))
    fixed = sitk.ReadImage(str(f / "p0.nrrd"))
    assert Grid.from_image(written) == Grid.from_image(fixed)
    expected = sitk.Resample(sitk.ReadImage(str(f / "tumour.nrrd")), fixed,
                             field_transform(sitk.ReadImage(str(out / "transform.nrrd"))), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
    assert "moving_segmentation.nrrd" in json.loads((out / "summary.json").read_text())["files"]
