"""A registration's files: what the writers put in them reads back as the same numbers."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.registration.outputs import jacobian_image, read_tre_csv, write_tre_csv


def test_tre_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lm = {"fixed_lps": rng.normal(size=(4, 3)), "moving_lps": rng.normal(size=(4, 3)),
          "predicted_lps": rng.normal(size=(4, 3)), "before_mm": rng.random(4), "network_mm": rng.random(4),
          "after_mm": rng.random(4)}
    write_tre_csv(tmp_path / "tre.csv", lm, ["a", "b", "c", "d"])
    labels, before, network, after = read_tre_csv(tmp_path / "tre.csv")
    assert labels == ["a", "b", "c", "d"]
    for read, wrote in ((before, "before_mm"), (network, "network_mm"), (after, "after_mm")):
        np.testing.assert_allclose(read, lm[wrote], atol=1e-4)


def test_jacobian_image_lies_on_the_transform_grid(tiny_model):
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray((rng.random((20, 24, 28)) * 1000 - 1000).astype(np.float32))
    image.SetSpacing((1.5, 1.2, 2.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    result = register_images(image, image, load_model(tiny_model), warp_moving=False, refinement=None)
    jac = jacobian_image(result)
    assert Grid.from_image(jac) == Grid.from_image(result.displacement) == result.out_grid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(jac), result.jacobian.astype(np.float32))
