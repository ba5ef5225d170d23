"""``progreg train`` (also ``Scripts/train.py`` for ``Slicer --no-main-window``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist

from ..core.atomic import check_writable
from ..core.errors import InputError
from ..io.resources import BUNDLED_SAMPLE
from ..model.config import load_config, save_config
from ..training.checkpoint import export_checkpoint
from ..training.trainer import Trainer

SMOKE_OVERRIDES = [
    "synthesis.size=32", "network.levels=3", "network.base_channels=4", "schedule.delta=20", "schedule.Delta=60",
    "train.iterations=120", "train.snapshot_every=40", "train.validation_pairs=2", "train.workers=0", "train.threads=2",
]


class ProgressBar:
    """One line on stderr, redrawn at most twice a second: iteration, active weights, loss, time left."""

    def __init__(self, start: int):
        self.start, self.t0, self.last = start, time.time(), 0.0
        self.drawn = False

    def __call__(self, it: int, total: int, alpha: np.ndarray, losses: dict) -> None:
        if time.time() - self.last < 0.5 and it + 1 < total:
            return
        self.last = time.time()
        rate = (time.time() - self.t0) / max(it + 1 - self.start, 1)
        left = rate * (total - it - 1)
        a = "[" + " ".join(f"{v:.2f}" for v in alpha) + "]"
        loss = " ".join(f"{k[:4]} {v:.3g}" for k, v in losses.items())
        bar = "#" * int(20 * (it + 1) / total)
        sys.stderr.write(f"\r[{bar:<20}] {it + 1}/{total} α={a} loss {loss} "
                         f"{rate:.2f}s/it, {int(left // 60)}m{int(left % 60):02d}s left  ")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def cmd_train(args) -> int:
    overrides = list(SMOKE_OVERRIDES if args.smoke else []) + list(args.set)
    if args.images:
        overrides.append("train.images=" + json.dumps(list(args.images)))
    elif args.smoke and not args.config:
        overrides.append("train.images=" + json.dumps([str(BUNDLED_SAMPLE)]))
    out = Path(args.out)
    if str(args.out).strip() == "":
        raise InputError("--out: give a run folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    if args.export:
        if out.is_dir():  # before reading the checkpoint (a missing one is said by the export)
            check_writable(out)
        for path in export_checkpoint(out):
            print(path)
        return 0
    if not args.resume and (out / "checkpoint.pt").exists():
        raise InputError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    config_file = args.config
    if args.resume and not config_file and (out / "config.json").is_file():
        config_file = out / "config.json"  # the run's own settings; --set may extend train.iterations
        overrides = list(args.set) + ([f"train.images={json.dumps(list(args.images))}"] if args.images else [])
    cfg = load_config(config_file, overrides)
    trainer = Trainer(cfg, out, resume=args.resume)
    if trainer.rank == 0:
        save_config(cfg, out / "config.json")
    bar = None if args.quiet else ProgressBar(trainer.iteration)
    try:
        last = trainer.train(bar)
    except FloatingPointError as err:
        print(f"\nprogreg train: error: {err}", file=sys.stderr)
        return 1
    finally:
        if bar:
            bar.close()
    if trainer.rank == 0:
        print(json.dumps(dict(last), default=str))
    if trainer.distributed:
        dist.destroy_process_group()
    return 0
