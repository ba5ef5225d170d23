"""Accuracy measures: landmark TRE and its summary, the training loss, end-point error.

Points are ``(n, 3)`` LPS mm; fields are ``(B, 3, nz, ny, nx)`` voxels of their grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .checks import check_pairs
from .grid import Grid

if TYPE_CHECKING:  # the losses take tensors; the TRE summaries run where torch is not loaded
    import torch


def tre_mm(predicted_lps: np.ndarray, moving_lps: np.ndarray) -> np.ndarray:
    """Per-pair Euclidean distance, mm."""
    check_pairs(predicted_lps, moving_lps)
    return np.linalg.norm(np.asarray(predicted_lps) - np.asarray(moving_lps), axis=1)


#: A landmark counts as made worse by the refinement when its TRE after refinement exceeds that of
#: the network alone by more than this (mm): above the refinement's sub-voxel jitter, and the size
#: of change a reader of the TRE table would act on.
REFINEMENT_WORSE_MM = 0.5


def worse_after_refinement(network_mm: np.ndarray, after_mm: np.ndarray) -> np.ndarray:
    """Per landmark (bool): the refinement moved its prediction more than
    :data:`REFINEMENT_WORSE_MM` further from its partner than the network alone had it."""
    return np.asarray(after_mm, dtype=np.float64) - np.asarray(network_mm, dtype=np.float64) > REFINEMENT_WORSE_MM


def snap_to_voxel(points_lps: np.ndarray, grid: Grid) -> np.ndarray:
    """Round LPS points to the nearest voxel centre of ``grid`` (DIR-Lab leaderboard rule)."""
    return grid.points_to_lps(np.round(grid.points_to_index(points_lps)))


def summary(values: np.ndarray) -> dict:
    """``{mean, sd, max, n}`` (population SD, as numpy and the DIR-Lab tables)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "sd": float(v.std()) if v.size else float("nan"),
            "max": float(v.max()) if v.size else float("nan"), "n": int(v.size)}


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ M ‖u - û‖² / Σ M (paper Eq. 4); ``pred``/``target`` ``(B, 3, ...)``, ``mask`` ``(B, ...)``."""
    return (mask * ((pred - target) ** 2).sum(1)).sum() / mask.sum().clamp_min(1e-6)


def endpoint_error_mm(pred_vox: torch.Tensor, target_vox: torch.Tensor, spacing_mm: torch.Tensor,
                      mask: torch.Tensor) -> float:
    """Mean ‖(u - û)·spacing‖ (mm) where ``mask > 0.5``; fields ``(3, ...)``, ``spacing_mm`` (3,)
    ordered (x, y, z) like the field's components."""
    err = ((pred_vox - target_vox) * spacing_mm.reshape(3, *[1] * (pred_vox.dim() - 1))).norm(dim=0)
    return float(err[mask > 0.5].mean())
