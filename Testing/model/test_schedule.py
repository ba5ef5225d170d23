"""The progressive schedule: the paper's trapezoid α(t), its landmarks, the step ablation."""

from __future__ import annotations

import numpy as np
import pytest

from ProgressiveRegistrationLib.model import schedule


def trapezoid(t, i, levels, delta, Delta):
    tau = -Delta / 2 + (Delta - delta) * i
    rise = min(1, max(0, (t - tau) / delta))
    fall = 1.0 if i == levels - 1 else min(1, max(0, (tau + Delta - t) / delta))
    return min(rise, fall)


@pytest.mark.parametrize("t", [0, 500, 1999, 2000, 2500, 4000, 7777, 12000, 14999, 15000, 40000])
def test_alpha_is_the_papers_trapezoid(t):
    a = schedule.alphas(t, 5, 2000, 6000)
    assert a.sum() == pytest.approx(1.0)
    assert (a > 0).sum() <= 2
    np.testing.assert_allclose(a, [trapezoid(t, i, 5, 2000, 6000) for i in range(5)])


def test_schedule_landmarks_of_the_paper():
    np.testing.assert_allclose(schedule.alphas(0, 5, 2000, 6000), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(schedule.alphas(2000, 5, 2000, 6000), [0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(schedule.alphas(15000, 5, 2000, 6000), [0, 0, 0, 0, 1])
    assert schedule.end_of_growth(5, 2000, 6000) == 15000
    a = schedule.alphas(3000, 5, 2000, 6000)
    np.testing.assert_allclose(schedule.betas(a), [0, 1, 1, 1, 1])
    np.testing.assert_allclose(schedule.gammas(schedule.alphas(2500, 5, 2000, 6000)), [0.75, 0, 0, 0, 0])
    np.testing.assert_allclose(schedule.alphas(123, 5, 2000, 6000, progressive=False), [0, 0, 0, 0, 1])


def test_delta_zero_is_a_step():
    for t in range(-100, 30000, 250):
        a = schedule.alphas(t, 5, 0, 4000)
        assert a.sum() == 1 and set(np.unique(a)) <= {0.0, 1.0}
    assert schedule.alphas(1999, 5, 0, 4000)[0] == 1 and schedule.alphas(2000, 5, 0, 4000)[1] == 1
