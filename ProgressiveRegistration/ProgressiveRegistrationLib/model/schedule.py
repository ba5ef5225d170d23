"""The progressive schedule: level weights α(t), β and γ (paper Eq. 1-3; docs/CONVENTIONS.md).

Level ``i`` runs from 0 (coarsest, N/2^(L-1)) to L-1 (finest, N³). Level i is trained in
the window starting at ``τ_i = -Δ/2 + (Δ - δ)·i`` of length Δ, fading in and out over δ
iterations (a trapezoid); the finest level stays at 1 once it has risen.
"""

from __future__ import annotations

import numpy as np


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def alphas(t: float, levels: int, delta: float, Delta: float, progressive: bool = True) -> np.ndarray:
    """α(t) for every level (shape ``(levels,)``), summing to one, at most two non-zero.

    With ``delta == 0`` the trapezoid is a step: α_i = 1 for τ_i <= t < τ_i + Δ (the
    paper's "no transitions" ablation). ``progressive=False`` is the baseline: the finest
    level only, from the start.
    """
    a = np.zeros(levels)
    if not progressive:
        a[-1] = 1.0
        return a
    for i in range(levels):
        tau = -Delta / 2.0 + (Delta - delta) * i
        if delta > 0:
            rise = _clip01((t - tau) / delta)
            fall = 1.0 if i == levels - 1 else _clip01((tau + Delta - t) / delta)
        else:
            rise = 1.0 if t >= tau else 0.0
            fall = 1.0 if (i == levels - 1 or t < tau + Delta) else 0.0
        a[i] = min(rise, fall)
    return a


def betas(alpha: np.ndarray) -> np.ndarray:
    """β_i = Σ_{j<=i} α_j: weight of level i's extra input convolution (β_{L-1} = 1)."""
    return np.minimum(np.cumsum(alpha), 1.0)


def gammas(alpha: np.ndarray) -> np.ndarray:
    """γ_i = 1 - β_i: weight of the pooled features coming from the finer level."""
    return 1.0 - betas(alpha)


def finest_active(alpha: np.ndarray) -> int:
    """The finest level with non-zero weight: the resolution an iteration runs at."""
    return int(np.nonzero(alpha > 0)[0].max())


def level_factor(alpha: np.ndarray, levels: int) -> int:
    """How many times coarser than N³ an iteration with weights ``alpha`` runs (1 at the finest level)."""
    return 2 ** (levels - 1 - finest_active(alpha))


def end_of_growth(levels: int, delta: float, Delta: float) -> float:
    """Iteration from which the finest level alone is active (15000 for the paper's values)."""
    return -Delta / 2.0 + (Delta - delta) * (levels - 1) + delta
