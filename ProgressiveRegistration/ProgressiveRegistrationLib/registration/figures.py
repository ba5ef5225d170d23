"""The figures of a registration (the overview) and of a 4DCT (the phases). matplotlib, Agg backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from ..core.atomic import write_file


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no window); imported on first use,
    so that registering without figures does not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _coronal(image, j: int) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(image)
    return np.array(arr[:, j, :], dtype=np.float32)  # a copy: the view dies with a temporary image


def _coronal_on(image, grid, j: int) -> np.ndarray:
    """Slice ``j`` (along axis j) of ``image`` resampled linearly onto ``grid`` (a geometry.Grid):
    only that one slice is resampled, not the whole volume. Shape (nk, ni), HU as float32."""
    slab = dataclasses.replace(grid, size=(grid.size[0], 1, grid.size[2]),
                               origin_lps=tuple(grid.points_to_lps(np.array([[0.0, j, 0.0]]))[0]))
    return _coronal(sitk.Resample(image, slab.reference_image(), sitk.Transform(), sitk.sitkLinear, -1024.0,
                                  sitk.sitkFloat32), 0)


def _overlay(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fixed in magenta, moving in green (lung window): aligned structures turn grey."""
    def norm(x):
        return np.clip((x + 1000.0) / 1400.0, 0, 1)

    fa, mb = norm(a), norm(b)
    return np.stack([fa, mb, fa], -1)


def overview_figure(fixed, moving, result, path) -> None:
    """Fig. 8-like overview: overlays before/after, Jacobian slice, TRE histogram."""

    plt = pyplot()
    fixed_grid = result.fixed_grid
    # Coronal slice through the centre of the fixed lung crop.
    centre = result.fixed_crop.points_to_lps(np.array([[(s - 1) / 2 for s in result.fixed_crop.size]]))
    j = int(np.clip(round(fixed_grid.points_to_index(centre)[0, 1]), 0, fixed_grid.size[1] - 1))
    f = _coronal(fixed, j)
    before = _coronal_on(moving, fixed_grid, j)
    after = _coronal(result.warped, j) if result.warped is not None else before
    sx, _, sz = fixed_grid.spacing_mm
    aspect = sz / sx
    has_tre = result.landmarks is not None
    ncol = 4 if has_tre else 3
    height_mm = f.shape[0] * sz
    width_mm = f.shape[1] * sx
    panel_w = 3.6 * min(1.6, max(0.5, width_mm / height_mm))
    fig, axes = plt.subplots(1, ncol, figsize=(panel_w * 3 + (4.0 if has_tre else 0), 4.2),
                             gridspec_kw={"width_ratios": [1, 1, 1.15] + ([1.6 * 3.6 / panel_w] if has_tre else [])})
    flip = fixed_grid.direction_matrix[2, 2] > 0  # show superior at the top
    for ax, img, title in ((axes[0], _overlay(f, before), "before"), (axes[1], _overlay(f, after), "after")):
        ax.imshow(img[::-1] if flip else img, aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    jac_grid = result.out_grid
    jj = int(np.clip(round(jac_grid.points_to_index(centre)[0, 1]), 0, jac_grid.size[1] - 1))
    jac = result.jacobian[:, jj, :]
    body = result.body_mask[:, jj, :]
    jac_aspect = jac_grid.spacing_mm[2] / jac_grid.spacing_mm[0]
    ct = _coronal_on(fixed, jac_grid, jj)
    axes[2].imshow(ct[::-1] if flip else ct, cmap="gray", vmin=-1000, vmax=400, aspect=jac_aspect)
    shown = np.where(body, jac, np.nan)
    im = axes[2].imshow(shown[::-1] if flip else shown, cmap="PuOr_r", vmin=0, vmax=2, alpha=0.75, aspect=jac_aspect)
    folded = np.where(body & (jac <= 0), 1.0, np.nan)
    axes[2].imshow(folded[::-1] if flip else folded, cmap="autumn", vmin=0, vmax=1, aspect=jac_aspect)
    axes[2].set_title(f"Jacobian det.\nfolding {result.folding_percent:.2f} % (red)", fontsize=9)
    axes[2].axis("off")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    if has_tre:
        b, a = result.landmarks["before_mm"], result.landmarks["after_mm"]
        refined = result.refinement is not None
        n = result.landmarks["network_mm"]
        top = max(b.max(), a.max(), n.max() if refined else 0.0)
        bins = np.linspace(0, top * 1.05 + 1e-6, 25)
        axes[3].hist(b, bins, alpha=0.6, label=f"before {b.mean():.2f} ± {b.std():.2f} mm")
        if refined:  # the network alone, then refined
            axes[3].hist(n, bins, alpha=0.5, label=f"network {n.mean():.2f} ± {n.std():.2f} mm")
        axes[3].hist(a, bins, alpha=0.6, label=f"{'refined' if refined else 'after'} {a.mean():.2f} ± {a.std():.2f} mm")
        axes[3].set_xlabel("TRE (mm)")
        axes[3].set_ylabel("landmarks")
        axes[3].legend(fontsize=8)
        axes[3].set_title(f"Landmark TRE (n = {len(a)})", fontsize=9)
    fig.suptitle("Coronal slice: fixed in magenta, moving in green (grey where they agree)", fontsize=9)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def phases_figure(fourd, reference_image, path) -> None:
    """A 4D registration at a glance: per phase a coronal slice of the Jacobian ventilation
    over the reference CT; below, the lung volume change over the phases and, with points,
    their distance from the reference position (each point up to 12 points, else the median
    and the 5–95 % band and the point that moves most)."""
    plt = pyplot()
    grid, lungs = fourd.grid, fourd.lungs
    n = len(fourd.phases)
    # The coronal slice through the middle of the reference lung.
    occupied = np.nonzero(lungs.any(axis=(0, 2)))[0] if lungs.any() else np.array([grid.size[1] // 2])
    j = int(occupied[len(occupied) // 2])
    ct = _coronal_on(reference_image, grid, j)
    flip = grid.direction_matrix[2, 2] > 0  # superior at the top
    aspect = grid.spacing_mm[2] / grid.spacing_mm[0]
    has_points = fourd.phases[0].points_lps is not None
    per_row = min(n, 5)
    rows = -(-n // per_row)
    fig = plt.figure(figsize=(2.4 * per_row + 1.0, 2.6 * rows + 3.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.6 * rows, 3.2])
    axes = np.atleast_1d(top.subplots(rows, per_row)).ravel()
    values = np.concatenate([p.ventilation_jacobian[lungs] for p in fourd.phases]) if lungs.any() else np.zeros(1)
    vmax = max(0.05, float(np.percentile(np.abs(values), 98)))
    image = None
    for ax in axes:
        ax.axis("off")
    for phase, ax in zip(fourd.phases, axes):
        v = np.where(lungs[:, j, :], phase.ventilation_jacobian[:, j, :], np.nan)
        ax.imshow(ct[::-1] if flip else ct, cmap="gray", vmin=-1000, vmax=400, aspect=aspect)
        image = ax.imshow(v[::-1] if flip else v, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect=aspect, alpha=0.85)
        change = phase.volume["change_percent"]
        ax.set_title(f"{phase.index}: reference" if phase.is_reference else f"{phase.index}: {change:+.1f} %", fontsize=9)
    top.colorbar(image, ax=axes.tolist(), fraction=0.03, label="det J − 1 (ml/ml)")
    top.suptitle("Jacobian ventilation against the reference (coronal slice), lung volume change per phase", fontsize=9)
    phases = [p.index for p in fourd.phases]
    plots = bottom.subplots(1, 2 if has_points else 1, squeeze=False)[0]
    ax = plots[0]
    ax.plot(phases, [p.volume["change_percent"] for p in fourd.phases], "o-")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(phases)
    ax.set_xlabel("phase")
    ax.set_ylabel("lung volume change (%)")
    ax.set_title(f"lung volume against phase {fourd.reference}", fontsize=9)
    if has_points:
        ax = plots[1]
        reference = fourd.phases[fourd.reference].points_lps
        distance = np.array([np.linalg.norm(p.points_lps - reference, axis=1) for p in fourd.phases])
        if distance.shape[1] <= 12:
            ax.plot(phases, distance, "o-", ms=3, lw=1)
        else:
            ax.fill_between(phases, np.percentile(distance, 5, 1), np.percentile(distance, 95, 1), alpha=0.3,
                            label="5–95 %")
            ax.plot(phases, np.median(distance, 1), "o-", ms=3, label="median")
            ax.plot(phases, distance[:, distance.max(0).argmax()], "k--", lw=1, label="the point moving most")
            ax.legend(fontsize=8)
        ax.set_xticks(phases)
        ax.set_xlabel("phase")
        ax.set_ylabel("distance from reference (mm)")
        ax.set_title(f"point trajectories (n = {distance.shape[1]})", fontsize=9)
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
