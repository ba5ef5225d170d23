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
