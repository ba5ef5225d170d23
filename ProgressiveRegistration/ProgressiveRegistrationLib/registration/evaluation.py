"""Scoring registrations against landmarks: one loop for DIR-Lab, training validation and
the experiments.

A :class:`PointPair` is two images with corresponding landmarks (LPS mm); :func:`score_pairs`
registers each through the engine (model loaded once) and yields its :class:`Score`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.grid import Grid
from ..core.metrics import snap_to_voxel, summary, tre_mm
from ..io import dirlab
from ..model.modelfile import Model, load_model
from .engine import register_images
from .refine_config import RefineConfig


@dataclass
class PointPair:
    """Two images to register (``moving`` onto ``fixed``) and their landmark pairs, LPS mm."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    fixed_lps: np.ndarray
    moving_lps: np.ndarray
    kind: str = ""


@dataclass
class Score:
    """Per-landmark TRE (mm) before, after the network alone and after the whole registration
    (the same as the network's when not refined), the predicted positions (LPS mm), folding
    inside the fixed body (%), and the engine's seconds per stage."""

    name: str
    kind: str
    before_mm: np.ndarray
    network_mm: np.ndarray
    after_mm: np.ndarray
    predicted_lps: np.ndarray
    folding_percent: float
    seconds: dict


def score_pairs(pairs: Iterable[PointPair], model: Model | str | Path | None = None, device: str = "cpu",
                refinement: RefineConfig | None = None,
                progress: Callable[[PointPair], None] | None = None) -> Iterator[Score]:
    """Register and score each pair in turn (lazily: a caller may cache or stop early)."""
    model = model if isinstance(model, Model) else load_model(model, device)
    for pair in pairs:
        if progress:
            progress(pair)
        r = register_images(pair.fixed, pair.moving, model, device, pair.fixed_lps, pair.moving_lps,
                            warp_moving=False, refinement=refinement)
        lm = r.landmarks
        yield Score(pair.name, pair.kind, lm["before_mm"], lm["network_mm"], lm["after_mm"], lm["predicted_lps"],
                    r.folding_percent, r.seconds)


def evaluate_dirlab(root, cases: list[int], model: Model | str | Path | None = None, device: str = "cpu",
                    progress: Callable[[int, str], None] | None = None,
                    refinement: RefineConfig | None = None) -> dict:
    """``{"cases": {"1": {"n": 300, "before_mm": {...}, "paper_before_mm": {...}}, ...}}``.

    Where a case folder holds its raw images, the pair is registered (T00 fixed, T50
    moving) and ``after_mm`` and ``after_snapped_mm`` (predictions rounded to the nearest
    voxel, the DIR-Lab leaderboard rule) are added, with ``folding_percent``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such DIR-Lab folder")
    out = {}
    loaded = None
    for case in cases:
        if dirlab.extreme_phase_files(root, case) is None:
            continue
        fixed, moving = dirlab.case_points_mm(root, case)
        before = tre_mm(fixed, moving)
        mean, sd = dirlab.CASES[case].paper_before_mm
        images = dirlab.image_files(root, case)
        entry = {"n": len(before), "before_mm": summary(before), "paper_before_mm": {"mean": mean, "sd": sd},
                 "images": images is not None}
        if images is not None:
            if progress:
                progress(case, "registering")
            loaded = loaded or (model if isinstance(model, Model) else load_model(model, device))
            c = dirlab.CASES[case]
            t00, t50 = (dirlab.read_raw(p, c.size, c.spacing_mm) for p in images)
            score = next(score_pairs([PointPair(f"case{case}", t00, t50, fixed, moving, "dirlab")], loaded, device,
                                     refinement))
            entry["after_mm"] = summary(score.after_mm)
            snapped = snap_to_voxel(score.predicted_lps, Grid.from_image(t50))
            entry["after_snapped_mm"] = summary(tre_mm(snapped, moving))
            entry["folding_percent"] = score.folding_percent
            entry["seconds"] = score.seconds
        out[str(case)] = entry
    if not out:
        raise InputError(f"{root}: no DIR-Lab case folders (CaseNPack or CaseNDeploy) with landmark files")
    return {"cases": out}
