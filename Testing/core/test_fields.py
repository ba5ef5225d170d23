"""Displacement-field operations: Jacobian determinant, folding, composition, resizing, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rotation

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.training.synthesis import spline_field


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


def _lps_of(grid: Grid) -> np.ndarray:
    """Every voxel's LPS position on ``grid``, ``[k, j, i, 3]``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size[::-1]], indexing="ij"), -1)[..., ::-1]
    return grid.points_to_lps(idx.reshape(-1, 3).astype(np.float64)).reshape(*grid.shape_zyx, 3)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), rotation(0.3, -0.2, 0.5)])
def test_separable_resampling_is_trilinear_interpolation_with_border_values(direction, monkeypatch):
    """A field linear in LPS is reproduced exactly inside the source grid and takes its border
    values beyond it (the analytic reference); axis-aligned maps (upsampled, downsampled, a
    shifted part, flipped axes) take the separable path and agree with grid_sample."""
    from ProgressiveRegistrationLib.registration.refine import resample_field

    a = np.array([[0.3, -0.1, 0.2], [0.05, 0.4, -0.3], [-0.2, 0.1, 0.25]])
    src = Grid((13, 11, 9), (2.0, 2.2, 3.0), (-10.0, 4.0, 20.0), tuple(direction.ravel()))
    v = torch.from_numpy(_lps_of(src) @ a.T).to(torch.float32)
    targets = [Grid((25, 21, 17), (1.0, 1.1, 1.5), src.origin_lps, src.direction),   # twice as fine
               Grid((5, 4, 3), (6.0, 6.6, 9.0), src.origin_lps, src.direction),      # coarser
               Grid((30, 8, 12), (1.3, 2.2, 2.5), tuple(src.points_to_lps(np.array([[-3.0, 2.5, -1.0]]))[0]),
                    src.direction)]                                                   # beyond the border
    for target in targets:
        index_map = src.lps_to_index @ target.index_to_lps
        assert fields.is_axis_aligned(index_map)
        got = fields.resample_separable(v, index_map, target.shape_zyx)
        # The analytic value at the source position, clamped to the source grid.
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in target.size[::-1]], indexing="ij"), -1)[..., ::-1]
        q = np.clip(ijk.reshape(-1, 3) @ index_map[:3, :3].T + index_map[:3, 3], 0, np.asarray(src.size) - 1)
        expected = (src.points_to_lps(q) @ a.T).reshape(*target.shape_zyx, 3)
        np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
        reference = fields.sample(v.movedim(-1, 0), fields.grid_points(target, index_map).movedim(-1, 0).float())
        np.testing.assert_allclose(got.numpy(), reference.movedim(0, -1).numpy(), atol=5e-5)
        np.testing.assert_allclose(resample_field(v, src, target).numpy(), got.numpy(), atol=0)
        base = np.random.default_rng(0).normal(size=got.shape).astype(np.float32)
        np.testing.assert_allclose(fields.resample_separable(v, index_map, target.shape_zyx, add=base).numpy(),
                                   got.numpy() + base, atol=1e-6)
        with monkeypatch.context() as patch:  # the device-generic path (three 1-D interpolations)
            patch.setattr(fields, "numba", None)
            np.testing.assert_allclose(fields.resample_separable(v, index_map, target.shape_zyx).numpy(), got.numpy(),
                                       atol=2e-5)
    # A target turned against the source: not axis-aligned, so grid_sample; still exact inside.
    turned = Grid((10, 9, 7), (1.5, 1.5, 2.0), tuple(src.points_to_lps(np.array([[3.0, 3.0, 2.0]]))[0]),
                  tuple((direction @ rotation(0.0, 0.0, 0.4)).ravel()))
    index_map = src.lps_to_index @ turned.index_to_lps
    assert not fields.is_axis_aligned(index_map)
    q = src.points_to_index(_lps_of(turned).reshape(-1, 3))
    inside = np.all((q >= 0) & (q <= np.asarray(src.size) - 1), axis=1)
    got = resample_field(v, src, turned).numpy().reshape(-1, 3)
    np.testing.assert_allclose(got[inside], (_lps_of(turned).reshape(-1, 3) @ a.T)[inside], atol=5e-5)
    assert inside.mean() > 0.5
