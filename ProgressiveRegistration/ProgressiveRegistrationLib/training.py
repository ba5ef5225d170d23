"""Training: progressive and baseline U-Nets side by side on the same synthetic pairs.

Paper Sec. II-F and III: masked L2 loss, SGD (lr 1e-2, momentum 0.5), batch 1, a snapshot
every 50 iterations evaluated on a fixed validation set; the baseline starts from the same
initial weights and sees the same pairs.

Reproducibility: pair ``t`` is a pure function of (seed, t), so a resumed run draws the
same data; checkpoints hold weights, optimiser states, RNG states and the iteration, and
are written atomically. Several processes (``torchrun``) split each iteration's batch.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import fields, schedule
from .config import Config, config_from_dict, load_config, save_config
from .errors import InputError
from .images import IMAGE_SUFFIXES, list_dicom_series
from .network import ProgressiveUNet, export_state
from .synthesis import PHANTOM_PREFIX, SyntheticPairs, load_ref, make_pair, pair_generator

ARMS = {"progressive": ("progressive",), "baseline": ("baseline",), "both": ("progressive", "baseline")}


# --- data -----------------------------------------------------------------------------------

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


class _Pairs(SyntheticPairs):
    """Pairs ``offset + rank + world * k`` for ``k = 0, 1, ...`` (one stream per process)."""

    def __init__(self, images, cfg, seed, offset, rank=0, world=1):
        super().__init__(images, cfg, seed)
        self.offset, self.rank, self.world = offset, rank, world

    def __getitem__(self, k):
        return super().__getitem__(self.offset + self.rank + self.world * k)


def validation_pairs(images: list[str], cfg: Config) -> list[dict]:
    """A fixed validation set: synthetic pairs of held-out images (seed-independent of training)."""
    pairs = []
    for k in range(cfg.train.validation_pairs):
        ref = images[k % len(images)]
        volume = load_ref(ref, cfg.synthesis)
        pair = make_pair(volume, cfg.synthesis, pair_generator(cfg.train.seed + 7919, 10**6 + k))
        pair["spacing_mm"] = torch.tensor(volume.grid.spacing_mm, dtype=torch.float32)
        pairs.append(pair)
    return pairs


# --- loss and metrics ---------------------------------------------------------------------------

class _Snapshot(torch.nn.Module):
    """The network as it is at iteration t (its α), as a full-resolution U-Net for the engine."""

    def __init__(self, model: ProgressiveUNet, alpha: np.ndarray):
        super().__init__()
        self.model, self.alpha = model, alpha
        self.levels = model.levels

    def forward(self, x):
        factor = 2 ** (self.levels - 1 - schedule.finest_active(self.alpha))
        return fields.resize_field(self.model(fields.downsample(x, factor), self.alpha), x.shape[-3:])


def load_landmark_pairs(entries: list[dict]) -> list[dict]:
    """Read the validation landmark pairs: {fixed, moving, fixed_landmarks, moving_landmarks}."""
    from .geometry import Grid
    from .images import read_image
    from .landmarks import check_pairs, read_landmarks

    pairs = []
    for i, e in enumerate(entries):
        missing = {"fixed", "moving", "fixed_landmarks", "moving_landmarks"} - set(e)
        if missing:
            raise InputError(f"train.validation_landmarks[{i}]: missing {', '.join(sorted(missing))}")
        fixed, moving = read_image(e["fixed"]), read_image(e["moving"])
        f = read_landmarks(e["fixed_landmarks"]).to_lps(Grid.from_image(fixed))
        m = read_landmarks(e["moving_landmarks"]).to_lps(Grid.from_image(moving))
        check_pairs(f, m, f"train.validation_landmarks[{i}]")
        pairs.append({"fixed": fixed, "moving": moving, "fixed_lps": f, "moving_lps": m})
    return pairs


@torch.no_grad()
def landmark_tre(model: ProgressiveUNet, pairs: list[dict], alpha: np.ndarray, syn) -> float:
    """Mean TRE (mm) over the landmark validation pairs, through the full registration engine."""
    from .registration import Model, register_images

    model.eval()
    engine = Model(_Snapshot(model, alpha), syn, "snapshot")
    tres = []
    for p in pairs:
        r = register_images(p["fixed"], p["moving"], engine, str(next(model.parameters()).device), p["fixed_lps"],
                            p["moving_lps"], warp_moving=False)
        tres.append(r.landmarks["after_mm"])
    model.train()
    return float(np.concatenate(tres).mean())


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ M ‖u - û‖² / Σ M (paper Eq. 4); ``pred``/``target`` ``(B, 3, ...)``, ``mask`` ``(B, ...)``."""
    return (mask * ((pred - target) ** 2).sum(1)).sum() / mask.sum().clamp_min(1e-6)


def level_inputs(batch: dict, alpha: np.ndarray, levels: int):
    """Images, targets and mask resized to the finest active level's resolution."""
    factor = 2 ** (levels - 1 - schedule.finest_active(alpha))
    x = fields.downsample(batch["input"], factor)
    target = fields.downsample(batch["target"], factor)  # values stay voxels of the full grid
    mask = fields.downsample(batch["mask"][:, None], factor)[:, 0]
    return x, target, mask


@torch.no_grad()
def validate(model: ProgressiveUNet, pairs: list[dict], alpha: np.ndarray) -> float:
    """Mean end-point error inside the mask, mm, of the network as it is at this iteration.

    The output (at the active resolution) is resized to N³ before comparing.
    """
    model.eval()
    errors = []
    levels = model.levels
    for pair in pairs:
        batch = {k: v[None] for k, v in pair.items() if k in ("input", "target", "mask")}
        x, _, _ = level_inputs(batch, alpha, levels)
        pred = fields.resize_field(model(x, alpha), pair["target"].shape[-3:])[0]
        err_mm = ((pred - pair["target"]) * pair["spacing_mm"][:, None, None, None]).norm(dim=0)
        m = pair["mask"] > 0.5
        errors.append(float(err_mm[m].mean()))
    model.train()
    return float(np.mean(errors))


# --- checkpoints ---------------------------------------------------------------------------

def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class ProgressBar:
    """One line on stderr: iteration, active weights, loss, time left."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.t0 = total, start, time.time()
        self.enabled = enabled and total > start
        self.last = 0.0

    def update(self, it: int, alpha, losses: dict, force: bool = False):
        if not self.enabled or (time.time() - self.last < 0.5 and not force):
            return
        self.last = time.time()
        done = it + 1 - self.start
        rate = (time.time() - self.t0) / max(done, 1)
        left = rate * (self.total - it - 1)
        a = "[" + " ".join(f"{v:.2f}" for v in alpha) + "]"
        loss = " ".join(f"{k[:4]} {v:.3g}" for k, v in losses.items())
        bar = "#" * int(20 * (it + 1) / self.total)
        sys.stderr.write(f"\r[{bar:<20}] {it + 1}/{self.total} α={a} loss {loss} "
                         f"{rate:.2f}s/it, {int(left // 60)}m{int(left % 60):02d}s left  ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


# --- the trainer -------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: Config, out: Path, resume: bool = False, quiet: bool = False):
        self.cfg, self.out, self.quiet = cfg, Path(out), quiet
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        tc = cfg.train
        if tc.device.startswith("cuda") and not torch.cuda.is_available():
            print("CUDA is not available: training on the CPU", file=sys.stderr)
            tc.device = "cpu"
        self.device = torch.device(tc.device)
        self.memory_format = torch.channels_last_3d if tc.channels_last else torch.contiguous_format
        if self.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
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
        self.models = {}
        for arm in ARMS[tc.mode]:
            # Same initial weights for both arms (paper Sec. III).
            self.models[arm] = copy.deepcopy(prog).to(self.device, memory_format=self.memory_format)
        self.optims = {arm: torch.optim.SGD(m.parameters(), lr=tc.lr, momentum=tc.momentum)
                       for arm, m in self.models.items()}
        self.iteration = 0
        self.log: list[dict] = []
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / "checkpoint.pt"
        if resume:
            if not ckpt.is_file():
                raise InputError(f"--resume: no checkpoint in {self.out}")
            self._load(ckpt)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = {arm: DDP(m, find_unused_parameters=True) for arm, m in self.models.items()}
        else:
            self.ddp = dict(self.models)
        self.val = validation_pairs(self.val_images, cfg)
        self.landmark_pairs = load_landmark_pairs(tc.validation_landmarks)
        self.identity_error = float(np.mean([
            float((p["target"] * p["spacing_mm"][:, None, None, None]).norm(dim=0)[p["mask"] > 0.5].mean())
            for p in self.val]))

    # state
    def _state(self) -> dict:
        return {"iteration": self.iteration, "config": self.cfg.to_dict(), "log": self.log,
                "models": {a: m.state_dict() for a, m in self.models.items()},
                "optims": {a: o.state_dict() for a, o in self.optims.items()},
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if set(state["models"]) != set(self.models):
            raise InputError(f"{path}: checkpoint holds arms {sorted(state['models'])}, config asks {sorted(self.models)}")
        for a in self.models:
            self.models[a].load_state_dict(state["models"][a])
            self.optims[a].load_state_dict(state["optims"][a])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.iteration, self.log = state["iteration"], state["log"]

    def alpha(self, arm: str, t: int) -> np.ndarray:
        s, L = self.cfg.schedule, self.cfg.network.levels
        return schedule.alphas(t, L, s.delta, s.Delta, progressive=(arm == "progressive" and s.progressive))

    def _loader(self):
        tc = self.cfg.train
        ds = _Pairs(self.images, self.cfg.synthesis, tc.seed, self.iteration * self.world * tc.batch_size,
                    self.rank, self.world)
        return iter(torch.utils.data.DataLoader(
            ds, batch_size=tc.batch_size, num_workers=tc.workers, shuffle=False,
            persistent_workers=False, prefetch_factor=2 if tc.workers else None))

    def train(self) -> dict:
        tc = self.cfg.train
        total = tc.iterations
        main = self.rank == 0
        bar = ProgressBar(total, self.iteration, enabled=main and not self.quiet)
        loader = self._loader()
        t_start = time.time()
        losses_since: dict[str, list[float]] = {a: [] for a in self.models}
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
                    bar.close()
                    raise FloatingPointError(f"{arm} loss is {float(loss)} at iteration {t}; "
                                             f"the last good checkpoint in {self.out} is kept")
                self.optims[arm].zero_grad(set_to_none=True)
                loss.backward()
                self.optims[arm].step()
                current[arm] = loss.item()
                losses_since[arm].append(current[arm])
            self.iteration = t + 1
            bar.update(t, self.alpha("progressive" if "progressive" in self.models else "baseline", t), current)
            if self.iteration % tc.snapshot_every == 0 or self.iteration == total:
                elapsed = (self.log[-1]["seconds"] if self.log else 0.0) + time.time() - t_start
                t_start = time.time()  # seconds accumulate across resumes
                row = {"iteration": self.iteration, "seconds": round(elapsed, 2)}
                a = self.alpha("progressive", t) if "progressive" in self.models else self.alpha("baseline", t)
                row["level"] = schedule.finest_active(a)
                row["alphas"] = " ".join(f"{v:.3f}" for v in a)
                row["identity_val_mm"] = self.identity_error
                for arm, model in self.models.items():
                    row[f"{arm}_loss"] = float(np.mean(losses_since[arm]))
                    row[f"{arm}_val_mm"] = validate(model, self.val, self.alpha(arm, t))
                    if self.landmark_pairs:
                        row[f"{arm}_landmark_tre_mm"] = landmark_tre(model, self.landmark_pairs, self.alpha(arm, t),
                                                                     self.cfg.synthesis)
                    losses_since[arm] = []
                if main:
                    self.log.append(row)
                    self._write_log()
                    keep = tc.keep_snapshots * tc.snapshot_every
                    if keep and self.iteration % keep == 0:
                        export_models(self.models, self.cfg, self.iteration, self.out / "snapshots",
                                      suffix=f"_{self.iteration:06d}")
                    atomic_save(self._state(), self.out / "checkpoint.pt")
        bar.close()
        if main:
            self.export()
            from .plots import training_figures

            training_figures(self)
        return self.log[-1] if self.log else {}

    def _write_log(self) -> None:
        keys = list(self.log[0])
        for row in self.log:
            keys += [k for k in row if k not in keys]
        tmp = self.out / ".log.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.log)
        os.replace(tmp, self.out / "log.csv")

    def export(self) -> None:
        """``model.pt`` (progressive arm, or the only arm) and ``model_baseline.pt``."""
        export_models(self.models, self.cfg, self.iteration, self.out)


def export_models(models: dict[str, ProgressiveUNet], cfg, iteration: int, out: Path, suffix: str = ""
                  ) -> list[Path]:
    """Write each arm's plain U-Net as ``model<suffix>.pt`` (the progressive arm, or the only
    arm) or ``model_baseline<suffix>.pt`` in ``out``, with what inference needs to prepare its input."""
    extra = {"input": cfg.synthesis.inference_input(), "iterations": iteration, "config": cfg.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for arm, model in models.items():
        name = f"model{suffix}.pt" if (arm == "progressive" or len(models) == 1) else f"model_baseline{suffix}.pt"
        atomic_save(export_state(model.unet, cfg.network, {**extra, "arm": arm}), out / name)
        written.append(out / name)
    return written


def export_checkpoint(run: Path) -> list[Path]:
    """The models of ``run/checkpoint.pt`` as of its last snapshot (e.g. of a run still training)."""
    path = Path(run) / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to export")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = config_from_dict(state["config"])
    models = {}
    for arm, weights in state["models"].items():
        models[arm] = ProgressiveUNet(cfg.network)
        models[arm].load_state_dict(weights)
    return export_models(models, cfg, int(state["iteration"]), Path(run))


# --- command line -------------------------------------------------------------------------------

SMOKE_OVERRIDES = [
    "synthesis.size=32", "network.levels=3", "network.base_channels=4", "schedule.delta=20", "schedule.Delta=60",
    "train.iterations=120", "train.snapshot_every=40", "train.validation_pairs=2", "train.workers=0", "train.threads=2",
]


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the progressive (and baseline) network on synthetic pairs",
                       description="Train on synthetic B-spline pairs of CT images (paper Sec. II-E/F). "
                                   "Writes log.csv, checkpoint.pt, model.pt and figures into --out.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def add_train_arguments(p) -> None:
    p.add_argument("--config", help="JSON or YAML config (defaults: the paper's values)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--export", action="store_true",
                   help="only write OUT/model.pt (and model_baseline.pt) from OUT/checkpoint.pt's last snapshot")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny run (32³, 3 levels, 120 iterations, both arms) on the bundled sample")
    p.add_argument("--images", nargs="+", help="training images (files, folders, DICOM folders)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=500")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def bundled_sample() -> Path:
    return Path(__file__).resolve().parent.parent / "Resources" / "Sample" / "lung_ct_small.mha"


def cmd_train(args) -> int:
    overrides = list(SMOKE_OVERRIDES if args.smoke else []) + list(args.set)
    if args.images:
        overrides.append("train.images=" + json.dumps(list(args.images)))
    elif args.smoke and not args.config:
        overrides.append("train.images=" + json.dumps([str(bundled_sample())]))
    out = Path(args.out)
    if args.export:
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
    try:
        trainer = Trainer(cfg, out, resume=args.resume, quiet=args.quiet)
        if trainer.rank == 0:
            save_config(cfg, out / "config.json")
        last = trainer.train()
    except FloatingPointError as err:
        print(f"progreg train: error: {err}", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        print(json.dumps({k: v for k, v in last.items()}, default=str))
    if trainer.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0
