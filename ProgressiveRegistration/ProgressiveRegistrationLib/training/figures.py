"""The training figures: a run's schedule and validation (paper Fig. 5), progressive versus
baseline (Fig. 6) and the level outputs (Fig. 7). matplotlib, Agg backend."""

from __future__ import annotations

import numpy as np
import torch

from ..core.atomic import write_file
from ..model.schedule import alphas
from ..registration.figures import pyplot


def _metric(trainer) -> tuple[str, str]:
    """The snapshot metric to plot: landmark TRE when landmark pairs were given."""
    if trainer.log and any(k.endswith("landmark_tre_mm") for k in trainer.log[-1]):
        return "landmark_tre_mm", "validation landmark TRE"
    return "val_mm", "validation end-point error"


def schedule_figure(trainer, path) -> None:
    """Fig. 5: α_i(t) of the schedule (A) and validation error per snapshot (B)."""
    plt = pyplot()
    cfg = trainer.cfg
    total = cfg.train.iterations
    t = np.linspace(0, total, 400)
    a = np.array([alphas(v, cfg.network.levels, cfg.schedule.delta, cfg.schedule.Delta) for v in t])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    n = cfg.synthesis.size
    for i in range(a.shape[1]):
        side = n // 2 ** (cfg.network.levels - 1 - i)
        ax1.plot(t, a[:, i], label=f"level {i} ({side}³)")
    ax1.set_ylabel("α")
    ax1.set_title(f"A. Schedule (δ = {cfg.schedule.delta}, Δ = {cfg.schedule.Delta})")
    ax1.legend(fontsize=8, loc="center right")
    its = [r["iteration"] for r in trainer.log]
    key, label = _metric(trainer)
    for arm in trainer.models:
        ax2.plot(its, [r[f"{arm}_{key}"] for r in trainer.log], "o-", ms=3, label=arm)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel(f"{label} (mm)")
    ax2.set_title(f"B. {label} per snapshot")
    ax2.legend()
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def comparison_figure(trainer, path) -> None:
    """Fig. 6: progressive versus baseline validation error, one point per snapshot."""
    plt = pyplot()
    key, label = _metric(trainer)
    p = np.array([r[f"progressive_{key}"] for r in trainer.log])
    b = np.array([r[f"baseline_{key}"] for r in trainer.log])
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(b, p, c=[r["iteration"] for r in trainer.log], cmap="viridis", s=12)
    hi = float(max(p.max(), b.max())) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel(f"baseline {label} (mm)")
    ax.set_ylabel(f"progressive {label} (mm)")
    fig.colorbar(sc, label="iteration")
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def levels_figure(trainer, path) -> None:
    """Fig. 7: the u_x map of each level's output head on one validation pair (mid slice)."""
    plt = pyplot()
    pair = trainer.val[0]
    arm = "progressive" if "progressive" in trainer.models else "baseline"
    model = trainer.models[arm].eval()
    with torch.no_grad():
        outs = model.level_outputs(pair["input"][None].to(next(model.parameters()).device))
    model.train()
    L = len(outs)
    fig, axes = plt.subplots(1, L + 1, figsize=(2.2 * (L + 1), 2.6))
    truth = pair["target"][0].cpu().numpy()
    vmax = float(np.abs(truth).max()) or 1.0
    for i, o in enumerate(outs):
        u = o[0, 0].cpu().numpy()
        axes[i].imshow(u[u.shape[0] // 2], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[i].set_title(f"level {i} ({u.shape[-1]}³)", fontsize=8)
    axes[L].imshow(truth[truth.shape[0] // 2], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    axes[L].set_title("ground truth", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"u_x per level, {arm} network after {trainer.iteration} iterations (voxels)", fontsize=9)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def training_figures(trainer) -> None:
    out = trainer.out
    if trainer.log:
        schedule_figure(trainer, out / "schedule_and_validation.png")
        if {"progressive", "baseline"} <= set(trainer.models):
            comparison_figure(trainer, out / "progressive_vs_baseline.png")
    levels_figure(trainer, out / "level_outputs.png")


