"""The trainer's data: training images, the stream of synthetic pairs per process, the fixed
validation sets (synthetic pairs of held-out images, optional landmark pairs)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..core.errors import InputError
from ..core.grid import Grid
from ..io.images import IMAGE_SUFFIXES, list_dicom_series, read_image
from ..io.landmarks import read_point_pairs
from ..model.config import Config, SynthesisConfig
from ..registration.evaluation import PointPair
from .synthesis import PHANTOM_PREFIX, SyntheticPairs, load_ref, make_pair, pair_generator


def collect_images(entries: list[str]) -> list[str]:
    """Expand files, folders of images and DICOM folders into a sorted list of image refs.

    A DICOM series is referred to as ``folder::SeriesInstanceUID``; ``phantom:0-39`` stands
    for 40 generated thorax phantoms (seeds 0 to 39).
    """
    found: list[str] = []
    for entry in entries:
        p = Path(entry)
        if entry.startswith(PHANTOM_PREFIX):
            m = re.fullmatch(r"phantom:(\d+)(?:-(\d+))?", entry)
            if not m:
                raise InputError(f"training image {entry}: use phantom:SEED or phantom:FIRST-LAST")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            found.extend(f"{PHANTOM_PREFIX}{s}" for s in range(lo, hi + 1))
        elif p.is_file():
            found.append(str(p))
        elif p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)
                           and not f.name.lower().endswith(".dcm"))
            if files:
                found.extend(files)
            else:
                found.extend(f"{p}::{s.uid}" for s in list_dicom_series(p))
        else:
            raise InputError(f"training image {entry}: no such file or directory")
    if not found:
        raise InputError(f"no training images found in {', '.join(entries) or '(none given)'}")
    return found


class ShardedPairs(SyntheticPairs):
    """Pairs ``offset + rank + world * k`` for ``k = 0, 1, ...``: one stream per process, and
    a resumed run (``offset`` = pairs already drawn) draws exactly the pairs it would have."""

    def __init__(self, images: list[str], cfg: SynthesisConfig, seed: int, offset: int, rank: int = 0, world: int = 1):
        super().__init__(images, cfg, seed)
        self.offset, self.rank, self.world = offset, rank, world

    def __getitem__(self, k):
        return super().__getitem__(self.offset + self.rank + self.world * k)


def validation_pairs(images: list[str], cfg: Config) -> list[dict]:
    """A fixed validation set: synthetic pairs of held-out images (seed-independent of training)."""
    pairs = []
    for k in range(cfg.train.validation_pairs):
        volume = load_ref(images[k % len(images)], cfg.synthesis)
        pair = make_pair(volume, cfg.synthesis, pair_generator(cfg.train.seed + 7919, 10**6 + k))
        pair["spacing_mm"] = torch.tensor(volume.grid.spacing_mm, dtype=torch.float32)
        pairs.append(pair)
    return pairs


def landmark_pairs(entries: list[dict]) -> list[PointPair]:
    """The validation landmark pairs of ``train.validation_landmarks``: each entry names
    ``fixed``, ``moving``, ``fixed_landmarks`` and ``moving_landmarks`` files."""
    pairs = []
    for i, e in enumerate(entries):
        missing = {"fixed", "moving", "fixed_landmarks", "moving_landmarks"} - set(e)
        if missing:
            raise InputError(f"train.validation_landmarks[{i}]: missing {', '.join(sorted(missing))}")
        fixed, moving = read_image(e["fixed"]), read_image(e["moving"])
        f, m, _ = read_point_pairs(e["fixed_landmarks"], e["moving_landmarks"], Grid.from_image(fixed),
                                   Grid.from_image(moving))
        pairs.append(PointPair(f"validation_landmarks[{i}]", fixed, moving, f, m, "validation"))
    return pairs
