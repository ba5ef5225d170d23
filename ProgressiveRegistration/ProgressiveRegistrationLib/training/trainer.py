"""Training: progressive and baseline U-Nets side by side on the same synthetic pairs.

Paper Sec. II-F and III: masked L2 loss, SGD (lr 1e-2, momentum 0.5), batch 1, a snapshot
every 50 iterations evaluated on a fixed validation set; the baseline starts from the same
initial weights and sees the same pairs.

Reproducibility: pair ``t`` is a pure function of (seed, t), so a resumed run draws the
same data; checkpoints (:mod:`checkpoint`) hold weights, optimiser states, RNG states and
the iteration, and are written atomically. Several processes (``torchrun``) split each
iteration's batch. Diagnostics go to :mod:`logging`; progress to the caller's callback.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..core import fields
from ..core.atomic import check_writable, write_text
from ..core.errors import InputError, write_error
from ..core.metrics import endpoint_error_mm, masked_l2
from ..model import schedule
from ..model.config import Config
from ..model.modelfile import Model
from ..model.network import ProgressiveUNet, ScheduledUNet
from ..registration.evaluation import PointPair, score_pairs
from .checkpoint import export_models, initial_weights, read_checkpoint, restore, save_checkpoint
from .figures import training_figures
from .synthesis import load_ref
from .trainset import ShardedPairs, collect_images, landmark_pairs, validation_pairs

log = logging.getLogger(__name__)

ARMS = {"progressive": ("progressive",), "baseline": ("baseline",), "both": ("progressive", "baseline")}

#: ``progress(iteration, total, alpha, losses)`` after every iteration.
Progress = Callable[[int, int, np.ndarray, dict], None]


def level_inputs(batch: dict, alpha: np.ndarray, levels: int):
    """Images, targets and mask resized to the finest active level's resolution."""
    factor = schedule.level_factor(alpha, levels)
    x = fields.downsample(batch["input"], factor)
    target = fields.downsample(batch["target"], factor)  # values stay voxels of the full grid
    mask = fields.downsample(batch["mask"][:, None], factor)[:, 0]
    return x, target, mask


@torch.no_grad()
def validate(model: ProgressiveUNet, pairs: list[dict], alpha: np.ndarray) -> float:
    """Mean end-point error inside the mask, mm, of the network as it is at this iteration
    (its output, at the active resolution, resized to N³ before comparing)."""
    model.eval()
    errors = []
    for pair in pairs:
        batch = {k: v[None] for k, v in pair.items() if k in ("input", "target", "mask")}
        x, _, _ = level_inputs(batch, alpha, model.levels)
        pred = fields.resize_field(model(x, alpha), pair["target"].shape[-3:])[0]
        errors.append(endpoint_error_mm(pred, pair["target"], pair["spacing_mm"], pair["mask"]))
    model.train()
    return float(np.mean(errors))


@torch.no_grad()
def landmark_tre(model: ProgressiveUNet, pairs: list[PointPair], alpha: np.ndarray, syn) -> float:
    """Mean TRE (mm) over the landmark validation pairs, through the full registration engine."""
    model.eval()
    engine = Model(ScheduledUNet(model, alpha), syn, "snapshot")
    device = str(next(model.parameters()).device)
    tre = [s.after_mm for s in score_pairs(pairs, engine, device)]
    model.train()
    return float(np.concatenate(tre).mean())


class Trainer:
    """One training run in the folder ``out`` (``log.csv``, ``checkpoint.pt``, models, figures).

    A folder that cannot be written (no permission, a read-only file system) is refused
    (:class:`InputError`, one line) before any image is read."""

    def __init__(self, cfg: Config, out: Path, resume: bool = False):
        self.cfg, self.out = cfg, Path(out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        if self.rank == 0:  # a folder that cannot be written is refused before any work
            check_writable(self.out, "--out")
        tc = cfg.train
        if tc.device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("CUDA is not available: training on the CPU")
            tc.device = "cpu"
        self.device = torch.device(tc.device)
        self.memory_format = torch.channels_last_3d if tc.channels_last else torch.contiguous_format
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if tc.threads:
            torch.set_num_threads(tc.threads)

        self.images = collect_images(tc.images)
        val_images = collect_images(tc.validation_images) if tc.validation_images else None
        if val_images is None:
            if len(self.images) > 1:
                val_images, self.images = self.images[-1:], self.images[:-1]
            else:
                val_images = self.images  # one image: validation pairs differ only by their seeds
        self.val_images = val_images
        for ref in self.images + self.val_images:  # fail early on unreadable images
            load_ref(ref, cfg.synthesis)

        torch.manual_seed(tc.seed)
        prog = ProgressiveUNet(cfg.network)
        if tc.init_model and not resume:  # a resumed run's weights come from its checkpoint
            prog.unet.load_state_dict(initial_weights(tc.init_model, cfg.network, cfg.synthesis))
        # Same initial weights for both arms (paper Sec. III).
        self.models = {arm: copy.deepcopy(prog).to(self.device, memory_format=self.memory_format)
                       for arm in ARMS[tc.mode]}
        self.optims = {arm: torch.optim.SGD(m.parameters(), lr=tc.lr, momentum=tc.momentum)
                       for arm, m in self.models.items()}
        self.iteration = 0
        self.log: list[dict] = []
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise (write_error(err, self.out) or err) from None
        if resume:
            ckpt = self.out / "checkpoint.pt"
            if not ckpt.is_file():
                raise InputError(f"--resume: no checkpoint in {self.out}")
            self.iteration, self.log = restore(read_checkpoint(ckpt, self.device), self.models, self.optims, ckpt)
        if self.distributed:
            self.ddp = {arm: DistributedDataParallel(m, find_unused_parameters=True) for arm, m in self.models.items()}
        else:
            self.ddp = dict(self.models)
        self.val = validation_pairs(self.val_images, cfg)
        self.landmark_pairs = landmark_pairs(tc.validation_landmarks)
        zero = torch.zeros(3)
        self.identity_error = float(np.mean([endpoint_error_mm(zero.reshape(3, 1, 1, 1), p["target"], p["spacing_mm"],
                                                               p["mask"]) for p in self.val]))

    def alpha(self, arm: str, t: int) -> np.ndarray:
        s, L = self.cfg.schedule, self.cfg.network.levels
        return schedule.alphas(t, L, s.delta, s.Delta, progressive=(arm == "progressive" and s.progressive))

    def _loader(self):
        tc = self.cfg.train
        ds = ShardedPairs(self.images, self.cfg.synthesis, tc.seed, self.iteration * self.world * tc.batch_size,
                          self.rank, self.world)
        return iter(torch.utils.data.DataLoader(
            ds, batch_size=tc.batch_size, num_workers=tc.workers, shuffle=False,
            persistent_workers=False, prefetch_factor=2 if tc.workers else None))

    def train(self, progress: Progress | None = None) -> dict:
        """Train to ``train.iterations``; returns the last snapshot's log row."""
        tc = self.cfg.train
        total = tc.iterations
        main = self.rank == 0
        loader = self._loader()
        t_start = time.time()
        losses_since: dict[str, list[float]] = {a: [] for a in self.models}
        shown_arm = "progressive" if "progressive" in self.models else "baseline"
        while self.iteration < total:
            t = self.iteration
            batch = {k: v.to(self.device) for k, v in next(loader).items()}
            batch["input"] = batch["input"].contiguous(memory_format=self.memory_format)
            current = {}
            for arm, model in self.ddp.items():
                alpha = self.alpha(arm, t)
                x, target, mask = level_inputs(batch, alpha, self.cfg.network.levels)
                loss = masked_l2(model(x, alpha), target, mask)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{arm} loss is {float(loss.detach())} at iteration {t}; "
                                             f"the last good checkpoint in {self.out} is kept")
                self.optims[arm].zero_grad(set_to_none=True)
                loss.backward()
                self.optims[arm].step()
                current[arm] = loss.item()
                losses_since[arm].append(current[arm])
            self.iteration = t + 1
            if progress and main:
                progress(t, total, self.alpha(shown_arm, t), current)
            if self.iteration % tc.snapshot_every == 0 or self.iteration == total:
                elapsed = (self.log[-1]["seconds"] if self.log else 0.0) + time.time() - t_start
                t_start = time.time()  # seconds accumulate across resumes
                self._snapshot(t, elapsed, losses_since, main)
        if main:
            self.export()
            training_figures(self)
        return self.log[-1] if self.log else {}

    def _snapshot(self, t: int, elapsed: float, losses_since: dict[str, list[float]], main: bool) -> None:
        tc = self.cfg.train
        a = self.alpha("progressive" if "progressive" in self.models else "baseline", t)
        row = {"iteration": self.iteration, "seconds": round(elapsed, 2), "level": schedule.finest_active(a),
               "alphas": " ".join(f"{v:.3f}" for v in a), "identity_val_mm": self.identity_error}
        for arm, model in self.models.items():
            row[f"{arm}_loss"] = float(np.mean(losses_since[arm]))
            row[f"{arm}_val_mm"] = validate(model, self.val, self.alpha(arm, t))
            if self.landmark_pairs:
                row[f"{arm}_landmark_tre_mm"] = landmark_tre(model, self.landmark_pairs, self.alpha(arm, t),
                                                             self.cfg.synthesis)
            losses_since[arm] = []
        if not main:
            return
        self.log.append(row)
        self._write_log()
        keep = tc.keep_snapshots * tc.snapshot_every
        if keep and self.iteration % keep == 0:
            export_models(self.models, self.cfg, self.iteration, self.out / "snapshots", suffix=f"_{self.iteration:06d}")
        save_checkpoint(self.out / "checkpoint.pt", self.iteration, self.cfg, self.log, self.models, self.optims)

    def _write_log(self) -> None:
        keys = list(self.log[0])
        for row in self.log:
            keys += [k for k in row if k not in keys]
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(self.log)
        write_text(self.out / "log.csv", text.getvalue())

    def export(self) -> None:
        """``model.pt`` (progressive arm, or the only arm) and ``model_baseline.pt``."""
        export_models(self.models, self.cfg, self.iteration, self.out)
