"""Physical-space core against independent references: SimpleITK's resampler and transforms,
analytic fields, the paper's Table II."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import MODULE_DIR

from ProgressiveRegistrationLib import fields, landmarks, transforms
from ProgressiveRegistrationLib.geometry import Box, Grid, crop_grid, lung_box
from ProgressiveRegistrationLib.synthesis import spline_field


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_image(grid: Grid, seed: int) -> sitk.Image:
    """A smooth random volume on ``grid`` (so linear interpolation error is small)."""
    g = torch.Generator().manual_seed(seed)
    nx, ny, nz = grid.size
    coarse = torch.rand((1, 6, 6, 6), generator=g) * 1000 - 500
    arr = torch.nn.functional.interpolate(coarse[None], size=(nz, ny, nx), mode="trilinear", align_corners=True)[0, 0]
    return grid.apply_to(sitk.GetImageFromArray(arr.numpy().astype(np.float32)))


@pytest.fixture
def setup():
    """Fixed and moving images of different, anisotropic, rotated, non-cubic geometry."""
    fixed_grid = Grid((40, 33, 27), (1.3, 0.9, 2.5), (-30.0, 12.0, 5.0), tuple(rotation(0.1, -0.15, 0.3).ravel()))
    moving_grid = Grid((36, 30, 29), (1.4, 1.0, 2.2), (-28.0, 10.0, 3.0), tuple(rotation(0.05, -0.1, 0.25).ravel()))
    moving = smooth_image(moving_grid, 1)
    n = 16
    fixed_crop = crop_grid(fixed_grid, Box((3, 2, 1), (34, 28, 24)), n)
    moving_crop = crop_grid(moving_grid, Box((2, 3, 2), (31, 25, 25)), n)
    gen = torch.Generator().manual_seed(3)
    u = spline_field((torch.rand((3, 4, 4, 4), generator=gen) * 2 - 1) * 1.5, n).double()
    return fixed_grid, moving_grid, moving, fixed_crop, moving_crop, u


def phi_ours(x_lps, fixed_crop, moving_crop, u):
    """φ(x) = G_m(G_f⁻¹(x) + u(G_f⁻¹(x))) at arbitrary LPS points, straight from docs/CONVENTIONS.md."""
    q = fixed_crop.points_to_index(x_lps)
    uq = fields.sample(u, torch.from_numpy(q.T.copy()), padding_mode="border").numpy().T
    return moving_crop.points_to_lps(q + uq)


def test_exported_field_warps_like_simpleitk(setup):
    fixed_grid, moving_grid, moving, fixed_crop, moving_crop, u = setup
    disp = transforms.displacement_lps(u, fixed_crop, moving_crop, fixed_grid)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(transforms.displacement_image(disp, fixed_grid),
                                                   sitk.sitkVectorFloat64))
    ref = sitk.GetArrayFromImage(sitk.Resample(moving, fixed_grid.reference_image(), tx, sitk.sitkLinear, 0.0,
                                               sitk.sitkFloat32))
    # Ours: φ at every fixed voxel, then the moving image sampled there with torch.
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_grid.size], indexing="ij"), -1).reshape(-1, 3)
    phi = phi_ours(fixed_grid.points_to_lps(idx), fixed_crop, moving_crop, u)
    q = moving_grid.points_to_index(phi)
    mov = torch.from_numpy(sitk.GetArrayFromImage(moving)).double()
    ours = fields.sample(mov, torch.from_numpy(q.T.copy()), padding_mode="zeros").numpy()
    ours = ours.reshape(fixed_grid.size).transpose(2, 1, 0)
    inside = np.all((q > 0) & (q < np.asarray(moving_grid.size) - 1), axis=1).reshape(fixed_grid.size).transpose(2, 1, 0)
    assert inside.mean() > 0.5
    rel = np.abs(ours - ref)[inside].max() / np.abs(ref[inside]).max()
    assert rel < 1e-4


def test_points_through_simpleitk_match_phi(setup, tmp_path):
    fixed_grid, _, _, fixed_crop, moving_crop, u = setup
    disp = transforms.displacement_lps(u, fixed_crop, moving_crop, fixed_grid)
    image = transforms.displacement_image(disp, fixed_grid)
    rng = np.random.default_rng(0)
    nodes = rng.integers(0, fixed_grid.size, size=(50, 3))
    x_nodes = fixed_grid.points_to_lps(nodes)
    x_any = fixed_grid.points_to_lps(rng.uniform(2, np.asarray(fixed_grid.size) - 3, size=(50, 3)))
    for suffix in ("nrrd", "nii.gz", "h5"):
        path = tmp_path / f"t.{suffix}"
        transforms.write_transform(image, path)
        tx = transforms.read_transform(path)
        # At grid nodes the stored field is φ - x exactly; between nodes ITK interpolates it
        # linearly, which differs from φ by second-order terms (a small fraction of a voxel).
        np.testing.assert_allclose(transforms.transform_points(tx, x_nodes), phi_ours(x_nodes, fixed_crop, moving_crop, u),
                                   atol=1e-4, err_msg=suffix)
        np.testing.assert_allclose(transforms.transform_points(tx, x_any), phi_ours(x_any, fixed_crop, moving_crop, u),
                                   atol=0.2, err_msg=suffix)


def test_phi_outside_crop_is_continuous_and_covers_image(setup):
    fixed_grid, _, _, fixed_crop, moving_crop, u = setup
    disp = transforms.displacement_lps(u, fixed_crop, moving_crop, fixed_grid)
    assert np.isfinite(disp).all() and np.abs(disp).max() > 0
    # No jump at the crop boundary: neighbouring displacements differ by a bounded amount.
    jumps = np.abs(np.diff(disp, axis=2)).max()
    assert jumps < 2.0
    # A coarser output grid still reaches the last voxel of the fixed image.
    out = transforms.output_grid(fixed_grid, fixed_crop)
    last = np.asarray(out.size) - 1
    fixed_extent_mm = (np.asarray(fixed_grid.size) - 1) * np.asarray(fixed_grid.spacing_mm)
    assert np.all(last * np.asarray(out.spacing_mm) >= fixed_extent_mm - 1e-6)
    assert np.all(np.asarray(out.spacing_mm) <= np.asarray(fixed_crop.spacing_mm) + 1e-9)


@pytest.mark.parametrize("compiled", [True, False])
def test_jacobian_of_linear_field_is_exact(compiled):
    rng = np.random.default_rng(1)
    a = rng.uniform(-0.2, 0.2, (3, 3))
    grid = Grid((12, 10, 9), (0.8, 1.1, 2.5), (5.0, -3.0, 40.0), tuple(rotation(0.3, 0.1, -0.2).ravel()))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in grid.size], indexing="ij"), -1).reshape(-1, 3)
    x = grid.points_to_lps(idx)
    d = (x @ a.T).reshape(*grid.size, 3).transpose(2, 1, 0, 3)  # [k, j, i, c]
    det = fields.jacobian_determinant(torch.from_numpy(d).movedim(-1, 0), grid.index_to_lps[:3, :3], compiled=compiled)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(np.eye(3) + a), rtol=1e-10)
    # The voxel form gives the same determinant (det is frame independent).
    m = grid.index_to_lps[:3, :3]
    u_vox = np.einsum("ab,kjib->akji", np.linalg.inv(m), d)
    np.testing.assert_allclose(fields.jacobian_determinant(torch.from_numpy(u_vox), compiled=compiled).numpy(),
                               np.linalg.det(np.eye(3) + a), rtol=1e-10)


def test_compiled_jacobian_matches_the_tensor_expression():
    """A rough float32 field (channel-last, as registration passes it) and a float64
    channel-first one: the compiled pass and the reference agree, edges included."""
    rng = np.random.default_rng(2)
    grid_m = Grid((11, 9, 7), (0.7, 0.9, 2.5), (0.0, 0.0, 0.0), tuple(rotation(0.2, -0.1, 0.4).ravel()))
    m = grid_m.index_to_lps[:3, :3]
    last = torch.from_numpy(rng.normal(size=(7, 9, 11, 3)).astype(np.float32)).movedim(-1, 0)
    first = torch.from_numpy(rng.normal(size=(3, 7, 9, 11)))
    for disp in (last, first):
        ref = fields.jacobian_determinant(disp, m, compiled=False)
        np.testing.assert_allclose(fields.jacobian_determinant(disp, m).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_folding_is_reported():
    n = 20
    x = torch.arange(n, dtype=torch.float64)
    u = torch.zeros(3, n, n, n, dtype=torch.float64)
    # u_x = -2 * bump(x) has du/dx < -1 on the bump's rising side: folds there.
    u[0] = (-4.0 * torch.exp(-((x - 10) / 2.0) ** 2))[None, None, :]
    det = fields.jacobian_determinant(u)
    assert det.min() < 0
    pct = fields.folding_percent(det)
    expected = float((det <= 0).double().mean() * 100)
    assert 0 < pct == pytest.approx(expected)
    mask = torch.zeros(n, n, n)
    mask[..., :5] = 1
    assert fields.folding_percent(det, mask) == 0.0


def test_compose_and_resize():
    n = 16
    g = torch.Generator().manual_seed(0)
    a = spline_field(torch.rand((3, 3, 3, 3), generator=g) * 2 - 1, n).double()
    b = spline_field(torch.rand((3, 3, 3, 3), generator=g) * 2 - 1, n).double()
    c = fields.compose(a, b)
    p = torch.tensor([[5.3], [7.1], [9.6]], dtype=torch.float64)
    pb = p + fields.sample(b, p)
    expect = pb + fields.sample(a, pb)
    np.testing.assert_allclose((p + fields.sample(c, p)).numpy(), expect.numpy(), atol=0.02)
    assert fields.resize_field(a, (8, 8, 8)).shape == (3, 8, 8, 8)


def test_gradient_magnitude_of_ramp():
    z, y, x = torch.meshgrid(*[torch.arange(20.0)] * 3, indexing="ij")
    vol = 2.0 * x + 1.0 * y - 3.0 * z
    mag = fields.gaussian_gradient_magnitude(vol, 0.5)
    np.testing.assert_allclose(mag[3:-3, 3:-3, 3:-3].numpy(), np.sqrt(14.0), rtol=1e-5)


def test_lung_crop_of_real_ct(chest_ct):
    image = sitk.ReadImage(str(chest_ct))
    box = lung_box(image)
    assert box is not None
    assert all(s > 10 for s in box.size)
    assert all(0 <= a and a + s <= n for a, s, n in zip(box.start, box.size, image.GetSize()))
    crop = crop_grid(Grid.from_image(image), box, 32)
    lo, hi = crop.bounding_box_lps()
    ilo, ihi = Grid.from_image(image).bounding_box_lps()
    assert np.all(lo >= ilo - 1e-3) and np.all(hi <= ihi + 1e-3)


# --- landmarks --------------------------------------------------------------------------------

def test_landmark_formats_agree(tmp_path):
    pts_lps = np.array([[1.5, -2.0, 30.25], [-10.0, 4.5, -7.0]])
    ras = pts_lps * [-1, -1, 1]
    (tmp_path / "a.fcsv").write_text(
        "# Markups fiducial file version = 5.6\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        + "".join(f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,F-{i},,\n" for i, p in enumerate(ras)))
    (tmp_path / "b.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
        + "".join(f"id{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,G-{i},,\n" for i, p in enumerate(pts_lps)))
    (tmp_path / "c.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"label": f"P{i}", "position": list(p)} for i, p in enumerate(ras)]}]}))
    (tmp_path / "d.txt").write_text("point\n2\n" + "".join(f"{p[0]} {p[1]} {p[2]}\n" for p in pts_lps), encoding="utf-8")
    (tmp_path / "e.csv").write_text("label,r,a,s\n" + "".join(f"p{i},{p[0]},{p[1]},{p[2]}\n" for i, p in enumerate(ras)))
    (tmp_path / "f.csv").write_text("# CoordinateSystem = LPS\nx,y,z\n" + "".join(f"{p[0]},{p[1]},{p[2]}\n" for p in pts_lps))
    landmarks.write_markups_json(tmp_path / "g.mrk.json", pts_lps)
    for name in ("a.fcsv", "b.fcsv", "c.mrk.json", "d.txt", "e.csv", "f.csv", "g.mrk.json"):
        got = landmarks.read_landmarks(tmp_path / name).to_lps()
        np.testing.assert_allclose(got, pts_lps, err_msg=name)


def test_voxel_landmark_formats(tmp_path):
    (tmp_path / "dirlab.txt").write_bytes(b"  10\t20\t5\r\n 1\t1\t1\r\n")
    (tmp_path / "index.txt").write_text("index\n2\n9 19 4\n0 0 0\n", encoding="utf-8")
    grid = Grid((50, 50, 20), (0.97, 0.97, 2.5), (0.0, 0.0, 0.0))
    a = landmarks.read_landmarks(tmp_path / "dirlab.txt").to_lps(grid)
    b = landmarks.read_landmarks(tmp_path / "index.txt").to_lps(grid)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a[0], [9 * 0.97, 19 * 0.97, 4 * 2.5])
    with pytest.raises(landmarks.InputError):
        landmarks.read_landmarks(tmp_path / "dirlab.txt").to_lps()


def test_snap_to_voxel():
    grid = Grid((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(landmarks.snap_to_voxel(np.array([[1.4, 2.6, 3.2]]), grid), [[1.0, 3.0, 4.0]])


# --- command line ---------------------------------------------------------------------------------

def progreg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", *map(str, args)], cwd=cwd or MODULE_DIR,
                          capture_output=True, text=True, encoding="utf-8")


def test_dirlab_reproduces_table_ii(dirlab_root):
    r = progreg("dirlab", dirlab_root, "--json")
    assert r.returncode == 0, r.stderr
    cases = json.loads(r.stdout)["cases"]
    assert sorted(cases, key=int) == [str(c) for c in range(1, 11)]
    for case, v in cases.items():
        assert v["n"] == 300
        assert v["before_mm"]["mean"] == pytest.approx(v["paper_before_mm"]["mean"], abs=0.01), case
        assert v["before_mm"]["sd"] == pytest.approx(v["paper_before_mm"]["sd"], abs=0.02), case


def test_dirlab_accepts_case8deploy(dirlab_root, tmp_path):
    import shutil

    shutil.copytree(dirlab_root / "Case8Pack", tmp_path / "Case8Deploy")
    r = progreg("dirlab", tmp_path, "--cases", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cases"]["8"]["before_mm"]["mean"] == pytest.approx(14.99, abs=0.01)


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
    r = progreg("tre", fixed, moving, "--spacing", 0.97, 0.97, 2.5, "--transform", tmp_path / "shift.tfm", "--snap")
    assert r.returncode == 0 and "after_mm" in r.stdout


def _bad(result, out_dir=None):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "error" in lines[0], result.stderr
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())


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
        _bad(progreg("synth", tmp_path / image, "--out", out, "--size", 16), out)
    (tmp_path / "a.txt").write_text("1 2 3\n4 5 6\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("1 2 3\n", encoding="utf-8")
    _bad(progreg("tre", tmp_path / "a.txt", tmp_path / "b.txt", "--spacing", 1, 1, 1))
    _bad(progreg("tre", tmp_path / "a.txt", tmp_path / "nope.txt", "--spacing", 1, 1, 1))
    _bad(progreg("tre", tmp_path / "a.txt", tmp_path / "a.txt"))  # voxel files need --spacing
    _bad(progreg("dirlab", tmp_path / "nowhere"))


def _write_dicom_series(folder, uid, description, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(0).random((n, 8, 8)) * 1000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(n):
        sl = img[:, :, z]
        for tag, value in (("0020|000e", uid), ("0008|103e", description), ("0020|0013", str(z + 1)),
                           ("0020|0032", f"0\\0\\{2.0 * z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0060", "CT"), ("0008|0018", f"{uid}.{z + 1}")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{z}.dcm"))
        writer.Execute(sl)


def test_dicom_series_listing_and_choice(tmp_path):
    from ProgressiveRegistrationLib.errors import InputError
    from ProgressiveRegistrationLib.images import list_dicom_series, read_image

    _write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.111", "T00 inhale")
    _write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.222", "T50 exhale")
    found = list_dicom_series(tmp_path / "4dct")
    assert {s.description for s in found} == {"T00 inhale", "T50 exhale"}
    assert all(len(s.files) == 4 for s in found)
    with pytest.raises(InputError, match="--series"):
        read_image(tmp_path / "4dct")
    image = read_image(tmp_path / "4dct", series="1.2.826.0.1.3680043.2.1125.222")
    assert image.GetSize() == (8, 8, 4)
    r = progreg("series", tmp_path / "4dct")
    assert r.returncode == 0 and "T50 exhale" in r.stdout and "4 slices" in r.stdout


def test_fill_holes_per_slice_matches_slice_loop():
    from ProgressiveRegistrationLib.geometry import fill_holes_per_slice

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.random((12, 30, 35)) > 0.35).astype(np.uint8))
    image.SetSpacing((1.0, 2.0, 3.0))
    reference = sitk.JoinSeries([sitk.BinaryFillhole(image[:, :, z]) for z in range(image.GetSize()[2])])
    ours = fill_holes_per_slice(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference))
    assert ours.GetSpacing() == image.GetSpacing()


def test_axis_aligned_and_general_paths_agree(setup):
    """The crop is cut along the fixed axes, so the field is sampled separably; the general
    path (every point mapped through grid_sample) must give the same field."""
    fixed_grid, _, _, fixed_crop, moving_crop, u = setup
    out = transforms.output_grid(fixed_grid, fixed_crop)
    fast = transforms.displacement_lps(u, fixed_crop, moving_crop, out)
    general = transforms._displacement_general(u, fixed_crop, moving_crop, out, slab=5)
    np.testing.assert_allclose(fast, general, atol=1e-4)


def test_rotated_output_grid_takes_the_general_path(setup):
    """An output grid not aligned with the crop (here: the moving image's grid) is still φ - x."""
    _, moving_grid, _, fixed_crop, moving_crop, u = setup
    disp = transforms.displacement_lps(u, fixed_crop, moving_crop, moving_grid)
    rng = np.random.default_rng(1)
    nodes = rng.integers(0, moving_grid.size, size=(40, 3))
    x = moving_grid.points_to_lps(nodes)
    np.testing.assert_allclose(x + disp[nodes[:, 2], nodes[:, 1], nodes[:, 0]],
                               phi_ours(x, fixed_crop, moving_crop, u), atol=1e-4)
