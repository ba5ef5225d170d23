"""Preprocessing: training and inference crop and prepare an image the same way."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import EXACT_RESTORINGS, ROTATED_RESTORINGS, SAMPLE, flipped

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.grid import LPS_AXES, Grid, box_grid_lps, stored_near_lps
from ProgressiveRegistrationLib.model.config import SynthesisConfig
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.model.preprocess import bore_mask_zyx, crop_hu, lung_crop, network_input
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.simulation.breathing import simulate
from ProgressiveRegistrationLib.training.synthesis import prepare_volume


@pytest.fixture(scope="module")
def sample():
    return sitk.ReadImage(str(SAMPLE))


def test_training_and_inference_crop_alike(sample, tiny_model):
    model = load_model(tiny_model)
    grid, found = lung_crop(sample, model.synthesis)
    assert found and grid.size == (32, 32, 32)
    volume = prepare_volume(sample, model.synthesis)  # training
    assert volume.grid == grid
    pair = simulate(sample, seed=0)
    result = register_images(pair.inhale, pair.exhale, model, warp_moving=False, refinement=None)  # inference
    assert result.fixed_crop == lung_crop(pair.inhale, model.synthesis)[0]
    assert torch.equal(result.fixed_input, network_input(crop_hu(pair.inhale, result.fixed_crop), model.synthesis))


def test_the_crop_covers_the_lungs_with_a_margin(sample):
    cfg = SynthesisConfig(size=32)
    grid, _ = lung_crop(sample, cfg)
    whole, found = lung_crop(sample, SynthesisConfig(size=32, crop_to_lungs=False))
    assert not found  # not looked for
    extent = np.asarray(grid.size) * grid.spacing_mm  # the N³ cells tile the box exactly
    image_extent = np.asarray(sample.GetSize()) * sample.GetSpacing()
    np.testing.assert_allclose(np.asarray(whole.size) * whole.spacing_mm, image_extent)
    assert np.all(extent <= image_extent + 1e-6) and np.any(extent < image_extent - 10)
    # Air outside the body: a flat image has no lungs, and the whole image is the crop.
    flat = sitk.Image(sample.GetSize(), sitk.sitkInt16) - 1000
    flat.CopyInformation(sample)
    assert lung_crop(flat, cfg) == (whole, False)


def test_network_input_is_the_gradient_magnitude_of_scaled_hu():
    hu = torch.from_numpy(np.random.default_rng(0).normal(-500, 300, (16, 16, 16)).astype(np.float32))
    cfg = SynthesisConfig(size=16, intensity_scale_hu=500.0, gradient_sigma_vox=0.7)
    np.testing.assert_allclose(network_input(hu, cfg), fields.gaussian_gradient_magnitude(hu / 500.0, 0.7), rtol=1e-6)


def test_bore_disc_has_the_papers_radius():
    image = Grid((512, 512, 2), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0))
    disc = bore_mask_zyx(image, image)[0]
    assert disc[255, 255] == 1 and disc[0, 0] == 0 and disc[255, 255 + 249] == 1 and disc[255, 255 + 252] == 0
    assert disc.mean() == pytest.approx(np.pi * (250 / 512) ** 2, rel=0.01)


# --- orientation: the network sees every storage of an image alike ---------------------------

@pytest.mark.parametrize("how", sorted(EXACT_RESTORINGS))
def test_a_restored_copy_has_the_same_crop_and_network_input(sample, how):
    """Flipped or permuted storage (world-identical): the same LPS-axis crop, the same input."""
    cfg = SynthesisConfig(size=32)
    copy = EXACT_RESTORINGS[how](sample)
    assert not np.allclose(copy.GetDirection(), sample.GetDirection())
    grid, found = lung_crop(sample, cfg)
    grid_copy, found_copy = lung_crop(copy, cfg)
    assert found and found_copy and grid_copy.direction == LPS_AXES == grid.direction
    np.testing.assert_allclose(grid_copy.origin_lps, grid.origin_lps, atol=1e-6)
    np.testing.assert_allclose(grid_copy.spacing_mm, grid.spacing_mm, atol=1e-9)
    np.testing.assert_allclose(crop_hu(copy, grid_copy).numpy(), crop_hu(sample, grid).numpy(), atol=1e-2)


@pytest.mark.parametrize("how", sorted(ROTATED_RESTORINGS))
def test_a_rotated_copy_has_nearly_the_same_crop(how):
    """Oblique storage: the crop is still the lungs' LPS box (not the box of a rotated box)."""
    from ProgressiveRegistrationLib.simulation.phantom import generate

    image = generate(3, (96, 80, 64), (3.2, 3.2, 5.0)).image
    cfg = SynthesisConfig(size=32)
    grid, _ = lung_crop(image, cfg)
    grid_copy, found = lung_crop(ROTATED_RESTORINGS[how](image), cfg)
    assert found and grid_copy.direction == LPS_AXES
    lo, hi = grid.extent_lps()
    lo_c, hi_c = grid_copy.extent_lps()
    assert np.abs(lo_c - lo).max() < 12.0 and np.abs(hi_c - hi).max() < 12.0, (lo, lo_c, hi, hi_c)


def test_the_crop_grid_tiles_the_lps_box():
    lo, hi = np.array([-10.0, 5.0, -300.0]), np.array([30.0, 45.0, -200.0])
    g = box_grid_lps(lo, hi, 8)
    np.testing.assert_allclose(g.extent_lps(), (lo, hi))
    np.testing.assert_allclose(g.spacing_mm, (5.0, 5.0, 12.5))
    assert stored_near_lps(flipped(sitk.ReadImage(str(SAMPLE)), 0)).GetDirection() == LPS_AXES
