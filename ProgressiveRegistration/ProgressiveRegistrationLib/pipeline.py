"""Files in, files out: read images and landmarks, run the engine, write every output.

``progreg register`` and the Slicer module's background process are this module's
:func:`register_files`; nothing is left in the output folder if anything fails.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import write_all
from .device import pick_device
from .engine import register_images, summary_of
from .errors import InputError
from .grid import Grid
from .images import read_image
from .landmarks import read_point_pairs
from .modelfile import Model, load_model
from .outputs import TRANSFORM_FORMATS, registration_writers
from .refine import DEFAULT as DEFAULT_REFINEMENT
from .refine import RefineConfig


def register_files(fixed: str | Path, moving: str | Path, out: str | Path, fixed_landmarks=None, moving_landmarks=None,
                   model: str | Path | Model | None = None, device: str = "cpu", size: int | None = None,
                   fmt: str = "nrrd", series: tuple[str | None, str | None] = (None, None), progress=None,
                   refinement: RefineConfig | None = DEFAULT_REFINEMENT, write_warped: bool = True,
                   write_overview: bool = True) -> dict:
    """``progreg register`` as a function: read, register, write every output into ``out``.

    Returns the summary (also written as ``summary.json``). ``size`` overrides the model's
    grid. ``refinement``: None for the network's one-pass field. ``write_warped`` /
    ``write_overview``: the warped moving image and the overview figure (a caller that shows
    the transform itself, such as Slicer, needs neither).
    """
    if fmt not in TRANSFORM_FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(TRANSFORM_FORMATS)}")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("give both --fixed-landmarks and --moving-landmarks, or neither")
    device, notice = pick_device(device)
    if notice and progress:
        progress(0.0, notice)
    fixed_img = read_image(fixed, series[0], "fixed image")
    moving_img = read_image(moving, series[1], "moving image")
    fixed_pts = moving_pts = None
    labels: list[str] = []
    if fixed_landmarks is not None:
        fixed_pts, moving_pts, labels = read_point_pairs(fixed_landmarks, moving_landmarks,
                                                         Grid.from_image(fixed_img), Grid.from_image(moving_img))
    model = (model if isinstance(model, Model) else load_model(model, device)).with_size(size)
    result = register_images(fixed_img, moving_img, model, device, fixed_pts, moving_pts, progress,
                             warp_moving=write_warped, refinement=refinement)
    summary = summary_of(result, model, device)
    write_all(out, registration_writers(result, summary, fixed_img, moving_img, labels, fmt, write_warped,
                                        write_overview))
    return summary
