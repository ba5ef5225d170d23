"""From the network's voxel field to ITK transforms, checked against SimpleITK's resampler."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import rotation

from ProgressiveRegistrationLib.core import fields, itk_fields, transforms
from ProgressiveRegistrationLib.core.grid import Box, Grid, crop_grid
from ProgressiveRegistrationLib.training.synthesis import spline_field


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
    tx = sitk.DisplacementFieldTransform(sitk.Cast(itk_fields.displacement_image(disp, fixed_grid),
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
    image = itk_fields.displacement_image(disp, fixed_grid)
    rng = np.random.default_rng(0)
    nodes = rng.integers(0, fixed_grid.size, size=(50, 3))
    x_nodes = fixed_grid.points_to_lps(nodes)
    x_any = fixed_grid.points_to_lps(rng.uniform(2, np.asarray(fixed_grid.size) - 3, size=(50, 3)))
    for suffix in ("nrrd", "nii.gz", "h5"):
        path = tmp_path / f"t.{suffix}"
        itk_fields.write_transform(image, path)
        tx = itk_fields.read_transform(path)
        # At grid nodes the stored field is φ - x exactly; between nodes ITK interpolates it
        # linearly, which differs from φ by second-order terms (a small fraction of a voxel).
        np.testing.assert_allclose(itk_fields.transform_points(tx, x_nodes), phi_ours(x_nodes, fixed_crop, moving_crop, u),
                                   atol=1e-4, err_msg=suffix)
        np.testing.assert_allclose(itk_fields.transform_points(tx, x_any), phi_ours(x_any, fixed_crop, moving_crop, u),
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


def test_mapping_points_equals_itks_displacement_field_transform():
    """map_points against SimpleITK's own transform of the same field: points inside, in the
    half voxel around the grid, and beyond it (ITK leaves those unchanged)."""
    grid = Grid((14, 11, 9), (1.3, 0.9, 2.5), (-30.0, 12.0, 5.0), tuple(rotation(0.1, -0.15, 0.3).ravel()))
    rng = np.random.default_rng(4)
    disp = rng.normal(0, 2.0, (*grid.shape_zyx, 3)).astype(np.float32)
    q = np.concatenate([rng.uniform(0, 1, (200, 3)) * (np.asarray(grid.size) - 1),
                        rng.uniform(-0.49, 0.0, (20, 3)), np.asarray(grid.size) - 1 + rng.uniform(0, 0.49, (20, 3)),
                        rng.uniform(-3, -0.6, (20, 3)), np.asarray(grid.size) + rng.uniform(0.6, 3, (20, 3))])
    points = grid.points_to_lps(q)
    itk = itk_fields.transform_points(itk_fields.field_transform(itk_fields.displacement_image(disp, grid)), points)
    got = transforms.map_points(disp, grid, points)
    np.testing.assert_allclose(got, itk, atol=1e-4)
    assert np.abs(got[-40:] - points[-40:]).max() == 0.0 and np.abs(got[:200] - points[:200]).max() > 1.0
