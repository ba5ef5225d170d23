"""Accuracy measures: TRE, its summary, snapping, the training loss and end-point error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.metrics import endpoint_error_mm, masked_l2, snap_to_voxel, summary, tre_mm


def test_snap_to_voxel():
    grid = Grid((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    np.testing.assert_allclose(snap_to_voxel(np.array([[1.4, 2.6, 3.2]]), grid), [[1.0, 3.0, 4.0]])
    shifted = Grid((10, 10, 10), (1.0, 1.0, 2.0), (0.5, 0.0, 0.0))  # voxel centres at x = 0.5, 1.5, ...
    np.testing.assert_allclose(snap_to_voxel(np.array([[1.4, 2.6, 3.2]]), shifted), [[1.5, 3.0, 4.0]])


def test_tre_and_summary():
    a = np.zeros((3, 3))
    b = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(tre_mm(a, b), [5.0, 1.0, 0.0])
    s = summary(tre_mm(a, b))
    assert s == {"mean": 2.0, "sd": pytest.approx(np.std([5.0, 1.0, 0.0])), "max": 5.0, "n": 3}
    with pytest.raises(InputError, match="pair up"):
        tre_mm(a, b[:2])


def test_masked_l2_is_eq_4_and_endpoint_error_is_in_mm():
    pred, target = torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2)
    target[0, 0, 0, 0, 0] = 3.0   # masked in: error² 9
    target[0, 1, 1, 1, 1] = 100.0  # masked out
    mask = torch.zeros(1, 2, 2, 2)
    mask[0, 0, 0, :] = 1.0  # two voxels
    assert float(masked_l2(pred, target, mask)) == pytest.approx(9.0 / 2)
    spacing = torch.tensor([2.0, 1.0, 1.0])
    assert endpoint_error_mm(pred[0], target[0], spacing, mask[0]) == pytest.approx((6.0 + 0.0) / 2)
