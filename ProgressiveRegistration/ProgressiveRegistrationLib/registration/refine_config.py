"""Settings of the test-time refinement (:mod:`.refine`), and the command line's options for
them. Imports neither torch nor numba: the command line's help and Slicer's panel read the
defaults without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core.errors import InputError


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement; the defaults are the measured operating point
    (``benchmarks/results/register.md``)."""

    #: Grid spacing of each level, mm, coarse to fine. The 16-mm level is there for large
    #: motion: on the large-motion benchmark's COPD-scale full chest (70 mm of diaphragm motion)
    #: 8, 4, 2 mm left a worst landmark of 3.7 mm that 16, 8, 4, 2 mm (with ``coarse_smoothness``)
    #: takes to 1.8 mm, for ~0.1 s (``benchmarks/results/large_motion.md``).
    levels_mm: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0)
    #: Adam iterations per level.
    iterations: tuple[int, ...] = (100, 100, 100, 40)
    #: Half-width of the local-NCC window, voxels of the level.
    radius_vox: int = 2
    #: Weight λ of the diffusion regulariser (mean squared gradient of the total field, per mm)
    #: at the last level, which sets the result.
    smoothness: float = 1.0
    #: λ at the levels before the last. Lower, so that the coarse levels can follow the steep
    #: change of the motion near the diaphragm, which a stiff field under-estimates (the
    #: phantoms' worst landmarks, at the lung base); the last level's λ then smooths what
    #: they leave (folding at most 0.01 % of the body on the benchmarks' pairs; 0.1 here folded
    #: more, 0.5 at every level 0.03-0.12 %; ``docs/CONVENTIONS.md``, "Refinement").
    coarse_smoothness: float = 0.3
    #: Adam step size, mm of displacement.
    learning_rate_mm: float = 0.5
    hu_range: tuple[float, float] = (-1000.0, 300.0)
    #: Adam's eps on the loss summed over the grid: gradients far below it do not move v.
    gradient_floor: float = 1e-2

    #: Variance below which a window counts as flat (intensities in [0, 1]: 1e-7 is a standard
    #: deviation of ~0.4 HU; lung texture has ~1e-4).
    eps: float = 1e-7
    #: Weight of the diffusion across the pleura for the slide along it (1: as everywhere else,
    #: the lungs dragged with the chest wall; below 1 they slide along it, the jump normal to the
    #: surface still fully penalised, so that no gap opens). ``refine.across_weights``. Measured
    #: (``benchmarks/results/sliding.md``): 0.1 against 1 on eleven sliding pairs, mean TRE
    #: 0.627 → 0.562 mm, worst landmark 6.59 → 4.06 mm; 0.05 was no better.
    sliding_weight: float = 0.1
    #: Compare the images only within this distance (mm) of the fixed lung field (None: the
    #: whole body; a user's mask always has its own margin, ``geometry.MASK_MARGIN_MM``).
    similarity_margin_mm: float | None = None

    def __post_init__(self):
        if not self.levels_mm:
            raise InputError("refinement: give at least one level")
        if any(not np.isfinite(s) or s <= 0 for s in self.levels_mm):
            raise InputError(f"refinement levels {list(self.levels_mm)}: spacings must be positive mm")
        if len(self.iterations) != len(self.levels_mm):
            raise InputError(f"refinement: {len(self.iterations)} iteration counts for {len(self.levels_mm)} levels")
        if any(int(n) != n or n < 0 for n in self.iterations):
            raise InputError(f"refinement iterations {list(self.iterations)}: must be whole numbers >= 0")
        if not all(np.isfinite(w) and w >= 0 for w in (self.smoothness, self.coarse_smoothness)):
            raise InputError(f"refinement smoothness {self.smoothness}, {self.coarse_smoothness}: must be >= 0")

    def at_level(self, last: bool) -> RefineConfig:
        """The settings of one level: the last level's λ is ``smoothness``, the others'
        ``coarse_smoothness``."""
        return self if last else replace(self, smoothness=self.coarse_smoothness)


#: The default refinement (frozen, so it can serve as a default argument).
DEFAULT = RefineConfig()

#: Iterations per level when levels are given without counts.
ITERATIONS_PER_LEVEL = 100


def config_from_options(levels: str | None, iterations: str | None) -> RefineConfig:
    """A :class:`RefineConfig` from the command line's ``--refine-levels``/``--refine-iterations``
    (either may be None: the defaults; custom levels without counts get
    ``ITERATIONS_PER_LEVEL`` each)."""
    levels_mm = parse_levels(levels) if levels is not None else DEFAULT.levels_mm
    if iterations is not None:
        counts = parse_iterations(iterations, len(levels_mm))
    else:
        counts = DEFAULT.iterations if levels is None else (ITERATIONS_PER_LEVEL,) * len(levels_mm)
    return RefineConfig(levels_mm=levels_mm, iterations=counts)


def parse_levels(text: str) -> tuple[float, ...]:
    """``"4,2"`` -> ``(4.0, 2.0)`` (level spacings in mm, coarse to fine)."""
    try:
        levels = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InputError(f"--refine-levels {text!r}: expected spacings in mm separated by commas, e.g. 4,2") from None
    if not levels or any(not np.isfinite(s) or s <= 0 for s in levels):
        raise InputError(f"--refine-levels {text!r}: expected positive spacings in mm, e.g. 4,2")
    return levels


def parse_iterations(text: str, n_levels: int) -> tuple[int, ...]:
    """``"60"`` (every level) or ``"60,40"`` (one per level) -> iteration counts."""
    try:
        counts = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InputError(f"--refine-iterations {text!r}: expected whole numbers, e.g. 60 or 60,40") from None
    if any(n < 0 for n in counts):
        raise InputError(f"--refine-iterations {text!r}: iteration counts cannot be negative")
    if len(counts) == 1:
        counts = counts * n_levels
    if len(counts) != n_levels:
        raise InputError(f"--refine-iterations {text!r}: give one count, or one per level ({n_levels})")
    return counts
