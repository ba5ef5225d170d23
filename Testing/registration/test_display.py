"""The display ranges say what they claim: a phase that only moved rigidly reads within the
stated noise floor of the ventilation map, far inside the fixed range every figure uses."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import SAMPLE

from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.display import (
    VENTILATION_NOISE_SD,
    VENTILATION_NOISE_SD_NETWORK_ALONE,
    VENTILATION_RANGE,
)
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.registration.refine_config import DEFAULT


def test_a_translated_copy_reads_within_the_noise_floor():
    ct = sitk.ReadImage(str(SAMPLE))
    moved = sitk.Image(ct)
    moved.SetOrigin(tuple(np.add(ct.GetOrigin(), (0.0, 0.0, 5.0))))  # 5 mm, rigid: no volume change anywhere
    model = load_model(None)
    for refinement, floor in ((DEFAULT, VENTILATION_NOISE_SD), (None, VENTILATION_NOISE_SD_NETWORK_ALONE)):
        r = register_images(ct, moved, model, warp_moving=False, refinement=refinement)
        ventilation = r.jacobian[r.lung_mask] - 1.0
        assert abs(ventilation.mean()) < 0.01
        assert ventilation.std() < floor < 0.15 * VENTILATION_RANGE[1], (refinement, ventilation.std())
