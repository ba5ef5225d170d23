"""The registration engine in memory: its stages' outputs agree with each other, the
reference's masks can be reused, and its notes go to the log."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.itk_fields import transform_points
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
from ProgressiveRegistrationLib.core.metrics import tre_mm
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images, summary_of
from ProgressiveRegistrationLib.simulation.breathing import simulate


@pytest.fixture(scope="module")
def pair():
    return simulate(sitk.ReadImage(str(SAMPLE)), seed=1, n_landmarks=20)


def test_stages_agree(pair, tiny_model):
    model = load_model(tiny_model)
    r = register_images(pair.inhale, pair.exhale, model, "cpu", pair.fixed_points_lps, pair.moving_points_lps)
    predicted = transform_points(r.transform(), pair.fixed_points_lps)
    np.testing.assert_allclose(r.landmarks["predicted_lps"], predicted)
    np.testing.assert_allclose(r.landmarks["after_mm"], tre_mm(predicted, pair.moving_points_lps))
    np.testing.assert_array_equal(r.landmarks["network_mm"], r.landmarks["after_mm"])  # not refined
    # The warped image is the moving image through the transform (ITK's resampler).
    itk = sitk.Resample(pair.exhale, pair.inhale, r.transform(), sitk.sitkLinear, -1024.0, pair.exhale.GetPixelID())
    diff = np.abs(sitk.GetArrayFromImage(itk).astype(float) - sitk.GetArrayFromImage(r.warped))
    assert (diff > 1).mean() < 1e-3
    # The masks lie on the transform's grid; folding is counted inside the body.
    masks = thorax_masks(pair.inhale)
    np.testing.assert_array_equal(r.lung_mask, mask_on(masks.lungs, r.out_grid))
    np.testing.assert_array_equal(r.body_mask, mask_on(masks.body, r.out_grid))
    assert r.folding_percent == pytest.approx(100.0 * (r.jacobian[r.body_mask] <= 0).mean())
    s = summary_of(r, model, "cpu")
    assert s["tre_after_mm"]["mean"] == pytest.approx(r.landmarks["after_mm"].mean())
    assert s["jacobian"]["min"] == pytest.approx(float(r.jacobian[r.body_mask].min()))


def test_given_fixed_masks_give_the_same_result(pair, tiny_model):
    model = load_model(tiny_model)
    a = register_images(pair.inhale, pair.exhale, model, warp_moving=False)
    b = register_images(pair.inhale, pair.exhale, model, warp_moving=False, fixed_masks=thorax_masks(pair.inhale))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a.displacement), sitk.GetArrayFromImage(b.displacement))


def test_notes_are_logged_and_kept(pair, tiny_model, caplog):
    flat = sitk.Image(pair.inhale.GetSize(), sitk.sitkInt16) + 40  # soft tissue only: no lungs
    flat.CopyInformation(pair.inhale)
    flat[0, 0, 0] = 41
    with caplog.at_level(logging.WARNING, logger="ProgressiveRegistrationLib"):
        r = register_images(flat, pair.exhale, load_model(tiny_model), warp_moving=False)
    assert any("no lung field found" in w for w in r.warnings)
    assert [rec.getMessage() for rec in caplog.records] == r.warnings


def test_bad_pairs_are_refused(pair, tiny_model):
    far = sitk.Image(pair.exhale)
    far.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not overlap"):
        register_images(pair.inhale, far, load_model(tiny_model))
    with pytest.raises(InputError, match="both fixed and moving"):
        register_images(pair.inhale, pair.exhale, load_model(tiny_model), fixed_points_lps=pair.fixed_points_lps)
    with pytest.raises(InputError, match="pair up"):
        register_images(pair.inhale, pair.exhale, load_model(tiny_model), "cpu", pair.fixed_points_lps,
                        pair.moving_points_lps[:-1])


class _Shift(torch.nn.Module):
    """A stand-in network: a constant field ``+a`` (voxels, x/y/z) where the moving input (channel 1)
    holds more structure than the fixed one, ``-a`` where it holds less: the field between a flat
    fixed crop and a textured moving crop, whichever order the two are given in."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.tensor(a, dtype=torch.float32).reshape(1, 3, 1, 1, 1)

    def forward(self, x):
        sign = torch.sign(x[:, 1].abs().sum() - x[:, 0].abs().sum())
        return (sign * self.a).expand(x.shape[0], 3, *x.shape[2:]).contiguous()


def test_a_second_pass_sees_the_warped_moving_crop_and_composes_in_the_right_order(tiny_model, monkeypatch):
    """Two passes with spatially varying fields (linear in the voxel position, so that the
    composition has a closed form and its order matters): the second pass gets the moving crop
    warped by the first field, and the result is ``v + u(x + v)``, not ``u + v(x + u)``."""
    from ProgressiveRegistrationLib.core import fields
    from ProgressiveRegistrationLib.registration import engine

    model = load_model(tiny_model)
    n = model.size
    zz, yy, xx = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    position = torch.stack([xx, yy, zz])  # (3, N, N, N): voxel x, y, z

    def linear(a, b):  # u(p) = A p + b, A (3, 3), b (3,): voxels
        return torch.einsum("ij,jkyx->ikyx", torch.tensor(a), position) + torch.tensor(b).reshape(3, 1, 1, 1)

    a_u, b_u = [[0.05, 0.0, 0.03], [0.0, -0.04, 0.0], [0.03, 0.0, 0.05]], [0.4, -0.3, 0.6]
    a_v, b_v = [[-0.03, 0.05, 0.0], [0.0, 0.03, 0.04], [0.0, 0.0, -0.05]], [-0.2, 0.5, 0.3]
    u, v = linear(a_u, b_u), linear(a_v, b_v)
    seen = []

    def answers(net, x, device):
        seen.append(x)
        return (u, v)[len(seen) - 1]

    monkeypatch.setattr(engine, "symmetric_forward", answers)
    g = torch.Generator().manual_seed(1)
    fixed, moving = (-800.0 + 300.0 * torch.rand((n, n, n), generator=g) for _ in range(2))
    total, _ = engine.network_field(model, fixed, moving, "cpu", 2)
    # The second pass's moving input: the moving crop warped by u.
    warped = fields.warp(moving, u)
    from ProgressiveRegistrationLib.model.preprocess import network_input
    inner = (slice(None), slice(6, -6), slice(6, -6), slice(6, -6))  # where the warp stays inside the crop
    torch.testing.assert_close(seen[1][0, 1][inner[1:]], network_input(warped, model.synthesis)[inner[1:]],
                               atol=1e-4, rtol=0)
    # v + u(x + v) for linear fields: v + A_u (p + v) + b_u.
    expected = v + torch.einsum("ij,jkyx->ikyx", torch.tensor(a_u), position + v) + torch.tensor(b_u).reshape(3, 1, 1, 1)
    torch.testing.assert_close(total[inner], expected[inner], atol=1e-4, rtol=0)
    wrong = u + torch.einsum("ij,jkyx->ikyx", torch.tensor(a_v), position + u) + torch.tensor(b_v).reshape(3, 1, 1, 1)
    assert float((total - wrong)[inner].abs().max()) > 0.1


def test_network_passes_compose_exactly_and_keep_an_aligned_pair_still(tiny_model):
    """Each pass of the cascade adds its field, composed: a network that answers a constant shift
    gives k shifts after k passes; identical crops stay exactly the identity, pass after pass."""
    from ProgressiveRegistrationLib.registration.engine import network_field

    model = load_model(tiny_model)
    n = model.size
    g = torch.Generator().manual_seed(0)
    fixed = torch.full((n, n, n), -800.0)
    moving = -800.0 + 300.0 * torch.rand((n, n, n), generator=g)
    shift = dataclasses.replace(model, net=_Shift([0.5, -0.25, 0.75]))
    for passes in (1, 2, 3):
        u, first = network_field(shift, fixed, moving, "cpu", passes)
        expected = torch.tensor([0.5, -0.25, 0.75]).reshape(3, 1, 1, 1) * passes
        torch.testing.assert_close(u, expected.expand_as(u), atol=1e-5, rtol=0)
        assert first.shape == (1, 2, n, n, n)
    for passes in (1, 2, 3):
        u, _ = network_field(model, moving, moving, "cpu", passes)
        assert torch.count_nonzero(u) == 0, passes
    with pytest.raises(InputError, match="network passes"):
        network_field(model, fixed, moving, "cpu", 0)
