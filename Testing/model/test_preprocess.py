"""Preprocessing: training and inference crop and prepare an image the same way."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.grid import Grid
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
