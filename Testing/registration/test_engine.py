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
