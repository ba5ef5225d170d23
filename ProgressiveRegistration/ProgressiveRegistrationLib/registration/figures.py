"""The figures of a registration (the overview) and of a 4DCT (the phases). matplotlib, Agg backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import write_file
from . import pictures
from .display import JACOBIAN_RANGE, VENTILATION_NOISE_SD, VENTILATION_NOISE_SD_NETWORK_ALONE, VENTILATION_RANGE
from .tolerances import signed


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


# --- orientation: which side of the patient each edge of a picture faces ------------------

#: det J's colours in every figure: compressed (< 1) purple, expanded (> 1) orange.
JACOBIAN_COLOURS = {"cmap": "PuOr_r", "vmin": JACOBIAN_RANGE[0], "vmax": JACOBIAN_RANGE[1]}

#: The patient's side a positive / negative LPS axis points to.
_TOWARDS, _AWAY = "LPS", "RAI"
_OPPOSITE = dict(zip("LPSRAI", "RAILPS"))
#: Per plane, the grid's index axes (0 = i, 1 = j, 2 = k) along the picture's columns, along its
#: rows, and across the plane.
PLANE_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}


def side(direction) -> str:
    """The patient's side (L, R, P, A, S, I) an LPS direction points to most."""
    a = int(np.argmax(np.abs(direction)))
    return _TOWARDS[a] if direction[a] > 0 else _AWAY[a]


def edge_letters(grid, plane: str, flip: bool) -> dict[str, str]:
    """The patient's side each edge of a picture of ``plane`` faces: ``{"left", "right", "top",
    "bottom"}``; the picture shows ``grid``'s array with its column index growing to the right
    and its row index downwards (``flip``: the rows drawn in reverse, superior up)."""
    h, v, _ = PLANE_AXES[plane]
    d = grid.direction_matrix
    right, bottom = side(d[:, h]), side(-d[:, v] if flip else d[:, v])
    return {"left": _OPPOSITE[right], "right": right, "top": _OPPOSITE[bottom], "bottom": bottom}


def anatomical_plane(grid, plane: str) -> str:
    """What an index plane of ``grid`` is in the patient: ``plane`` names the plane of the
    array (k, j or i constant, as stored in LPS order); an image stored otherwise (sagittal
    slices, say) has its "axial" array plane lying sagittally."""
    normal = side(grid.direction_matrix[:, PLANE_AXES[plane][2]])
    return {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}.get(normal, "sagittal")


def slice_position(grid, plane: str, centre_kji) -> str:
    """Where the plane through ``centre_kji`` lies: its LPS coordinate across the plane, e.g.
    ``"z = -1274.5 mm"``."""
    normal = grid.direction_matrix[:, PLANE_AXES[plane][2]]
    a = int(np.argmax(np.abs(normal)))
    lps = grid.points_to_lps(np.array([np.asarray(centre_kji, dtype=np.float64)[::-1]]))[0]
    return f"{'xyz'[a]} = {lps[a]:.1f} mm"


def orient(ax, grid, plane: str, flip: bool, scale: bool = True) -> None:
    """Letters at the picture's edges (the patient's side each faces) and, with ``scale``, a
    bar of a round number of millimetres in its lower left corner."""
    import matplotlib.patheffects as effects

    outline = [effects.withStroke(linewidth=2.2, foreground="black")]
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "path_effects": outline, "transform": ax.transAxes}
    letters = edge_letters(grid, plane, flip)
    ax.text(0.015, 0.5, letters["left"], ha="left", va="center", **style)
    ax.text(0.985, 0.5, letters["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.985, letters["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.015, letters["bottom"], ha="center", va="bottom", **style)
    if not scale:
        return
    h, v, _ = PLANE_AXES[plane]
    columns, rows = grid.size[h], grid.size[v]
    spacing = grid.spacing_mm[h]
    length = pictures.scale_bar_mm(columns * spacing)
    if length is None:
        return
    x0, y = 0.06 * columns, rows - 1 - 0.09 * rows
    ax.plot([x0, x0 + length / spacing], [y, y], color="white", lw=2.5, solid_capstyle="butt", path_effects=outline)
    ax.text(x0 + 0.5 * length / spacing, y - 0.02 * rows, f"{length} mm", ha="center", va="bottom", color="white",
            fontsize=7, path_effects=outline)
    _plane_limits(ax, plane, grid)  # (the bar must not widen the picture)


def _view(a: np.ndarray, flip: bool) -> np.ndarray:
    return a[::-1] if flip else a


def slice_panel(layers: list[np.ndarray], grid, plane: str, flip: bool, box_px: tuple[int, int], title: str = "",
                scale: bool = True) -> pictures.Panel:
    """A picture of a ``plane`` of ``grid`` (``layers``: RGBA layers of the plane as shown, bottom
    first) fitted into ``box_px`` with square millimetres, the patient's side at each edge and,
    with ``scale``, a mm scale bar."""
    h, v, _ = PLANE_AXES[plane]
    p = pictures.panel(pictures.flatten(*layers), grid.spacing_mm[v] / grid.spacing_mm[h], box_px, title)
    pictures.edge_labels(p, edge_letters(grid, plane, flip))
    if scale:
        pictures.scale_bar(p, grid.spacing_mm[h])
    return p


#: The histograms' colours (matplotlib's first three): before, the network alone, after.
BEFORE_RGB, NETWORK_RGB, AFTER_RGB = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def tre_picture(before_mm, network_mm, after_mm, refined: bool, size=(520, 300)):
    """The landmark TRE histograms (before, the network alone when refined, after) as a picture."""
    top = max(float(np.max(before_mm)), float(np.max(after_mm)), float(np.max(network_mm)) if refined else 0.0)
    series = [(before_mm, f"before {np.mean(before_mm):.2f} ± {np.std(before_mm):.2f} mm", BEFORE_RGB)]
    if refined:
        series.append((network_mm, f"network {np.mean(network_mm):.2f} ± {np.std(network_mm):.2f} mm", NETWORK_RGB))
    series.append((after_mm, f"{'refined' if refined else 'after'} {np.mean(after_mm):.2f} ± {np.std(after_mm):.2f} mm",
                   AFTER_RGB))
    return pictures.histogram(series, np.linspace(0, top * 1.05 + 1e-6, 30), "TRE (mm)", "landmark pairs", size)


def overview_figure(fixed, moving, result, path) -> None:
    """Fig. 8-like overview: overlays before/after, Jacobian slice, TRE histogram."""
    fixed_grid = result.fixed_grid
    # Coronal slice through the centre of the fixed lung crop.
    centre = result.fixed_crop.points_to_lps(np.array([[(s - 1) / 2 for s in result.fixed_crop.size]]))
    j = int(np.clip(round(fixed_grid.points_to_index(centre)[0, 1]), 0, fixed_grid.size[1] - 1))
    flip = fixed_grid.direction_matrix[2, 2] > 0  # show superior at the top
    f = _view(_coronal(fixed, j), flip)
    before = _view(_coronal_on(moving, fixed_grid, j), flip)
    after = _view(_coronal(result.warped, j), flip) if result.warped is not None else before
    box = (460, 620)
    cells = [slice_panel([pictures.rgb_layer(_overlay(f, m))], fixed_grid, "coronal", flip, box, title)
             for m, title in ((before, "before"), (after, "after"))]
    jac_grid = result.out_grid
    jj = int(np.clip(round(jac_grid.points_to_index(centre)[0, 1]), 0, jac_grid.size[1] - 1))
    jac = _view(result.jacobian[:, jj, :], flip)
    body = _view(result.body_mask[:, jj, :], flip)
    ct = _view(_coronal_on(fixed, jac_grid, jj), flip)
    jac_panel = slice_panel([pictures.layer(ct, "gray", -1000, 400),
                             pictures.layer(np.where(body, jac, np.nan), **JACOBIAN_COLOURS, alpha=0.75),
                             pictures.layer(np.where(body & (jac <= 0), 1.0, np.nan), "autumn", 0, 1)],
                            jac_grid, "coronal", flip, box,
                            f"Jacobian determinant, folding {result.folding_percent:.2f} % (red)")
    jac_panel.colour_bar = pictures.colour_bar(JACOBIAN_COLOURS["cmap"], *JACOBIAN_RANGE,
                                               "det J: < 1 compressed, > 1 expanded", jac_panel.image.size[1], 0.75)
    cells.append(jac_panel)
    if result.landmarks is not None:
        lm = result.landmarks
        tre = tre_picture(lm["before_mm"], lm["network_mm"], lm["after_mm"], result.refinement is not None,
                          size=(520, 340))
        cells.append(pictures.Panel(tre, title=f"Landmark TRE (n = {len(lm['after_mm'])})"))
    position = slice_position(fixed_grid, "coronal", (0, j, 0))
    plane = anatomical_plane(fixed_grid, "coronal").capitalize()
    sheet = pictures.sheet([cells], f"{plane} slice at {position} (LPS): fixed in magenta, moving in green (grey "
                                    "where they agree); letters: the patient's side")
    write_file(path, lambda tmp: Path(tmp).write_bytes(pictures.png(sheet)))


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
    fig = plt.figure(figsize=(3.0 * per_row + 1.2, 3.8 * rows + 3.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.8 * rows, 3.4])
    axes = np.atleast_1d(top.subplots(rows, per_row)).ravel()
    low, high = VENTILATION_RANGE  # fixed: a range scaled to each run makes noise look like ventilation
    refined = any(p.result is not None and p.result.refinement is not None for p in fourd.phases)
    noise = VENTILATION_NOISE_SD if refined else VENTILATION_NOISE_SD_NETWORK_ALONE
    image = None
    for ax in axes:
        ax.axis("off")
    for k, (phase, ax) in enumerate(zip(fourd.phases, axes)):
        v = np.where(lungs[:, j, :], phase.ventilation_jacobian[:, j, :], np.nan)
        ax.imshow(ct[::-1] if flip else ct, cmap="gray", vmin=-1000, vmax=400, aspect=aspect)
        image = ax.imshow(v[::-1] if flip else v, cmap="RdBu_r", vmin=low, vmax=high, aspect=aspect, alpha=0.85)
        name = phase.name if phase.name and len(phase.name) <= 24 else str(phase.index)
        change = phase.volume["change_percent"]
        ax.set_title(f"{name}: reference" if phase.is_reference else f"{name}: {signed(change)} %", fontsize=9)
        orient(ax, grid, "coronal", flip, scale=k == 0)
    top.colorbar(image, ax=axes.tolist(), fraction=0.03, label="det J − 1 (ml/ml)")
    top.suptitle(f"Jacobian ventilation against the reference (always {low:g} to {high:+g} ml/ml; a phase that only moved "
                 f"rigidly reads 0 ± {noise:g}), {anatomical_plane(grid, 'coronal')} slice at "
                 f"{slice_position(grid, 'coronal', (0, j, 0))} (LPS); lung volume change per phase", fontsize=9)
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
    write_file(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


# --- the quality report's pictures ---------------------------------------------------------

def png_bytes(fig, dpi: int = 80) -> bytes:
    """A figure as PNG bytes (for embedding in a page), closed afterwards."""
    import io

    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _planes(grid, centre_kji):
    """The three planes through ``centre_kji`` of arrays on ``grid``: (name, slicer, aspect, flip)."""
    k, j, i = centre_kji
    sx, sy, sz = grid.spacing_mm
    up = grid.direction_matrix[2, 2] > 0  # rows run inferior -> superior: flip to show superior at the top
    return [("axial", lambda a: a[k], sy / sx, False),
            ("coronal", lambda a: a[:, j, :], sz / sx, up),
            ("sagittal", lambda a: a[:, :, i], sz / sy, up)]


#: Folding voxels drawn as markers at most (the worst first).
FOLD_MARKERS_MAX = 20_000


def folding_points_lps(result) -> np.ndarray:
    """The LPS positions (mm, ``(n, 3)``) of the body voxels of the transform's grid where the
    field folds (det J ≤ 0), the worst first, at most :data:`FOLD_MARKERS_MAX`."""
    folded = result.body_mask & (result.jacobian <= 0)
    if not folded.any():
        return np.zeros((0, 3))
    kji = np.argwhere(folded)
    kji = kji[np.argsort(result.jacobian[folded], kind="stable")[:FOLD_MARKERS_MAX]]
    return result.out_grid.points_to_lps(kji[:, ::-1].astype(np.float64))


def _in_plane(name: str, centre_kji, shape_zyx, flip: bool, points_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points (continuous ``(i, j, k)`` indices of the plane's grid) within half a voxel of
    the plane ``name`` through ``centre_kji``, as (x, y) in the picture's pixel coordinates."""
    if not len(points_ijk):
        return np.zeros(0), np.zeros(0)
    i, j, k = points_ijk.T
    if name == "axial":
        near, x, y = np.abs(k - centre_kji[0]) <= 0.5, i, j
    elif name == "coronal":
        near, x, y = np.abs(j - centre_kji[1]) <= 0.5, i, k
    else:
        near, x, y = np.abs(i - centre_kji[2]) <= 0.5, j, k
    if flip:
        y = shape_zyx[0] - 1 - y
    return x[near], y[near]


def _plane_limits(ax, name, grid) -> None:
    """The picture's own extent (markers drawn over it must not widen it)."""
    ax.set_xlim(-0.5, grid.shape_zyx[2 if name != "sagittal" else 1] - 0.5)
    ax.set_ylim(grid.shape_zyx[1 if name == "axial" else 0] - 0.5, -0.5)


#: The size (px) each picture of the report's sheets is fitted into.
REPORT_BOX_PX = (280, 280)


def review_figure(result, maps) -> bytes:
    """TG-132's visual review on three planes through the lungs, two rows per plane: the
    checkerboards and |ΔHU| before and after; det J (folding in red), |d| with the deformed grid,
    and the doubt map. Each picture has the patient's sides at its edges and a mm scale bar; each
    plane says where it lies (LPS). PNG bytes."""
    grid, lungs, body, jacobian = maps.grid, maps.lungs, maps.body, maps.jacobian
    centre = np.round(np.argwhere(lungs).mean(0)).astype(int) if lungs.any() else np.asarray(grid.shape_zyx) // 2
    fixed, before, after = maps.fixed_hu, maps.before_hu, maps.after_hu
    disp = maps.displacement
    magnitude = np.linalg.norm(disp, axis=-1)
    tile = np.maximum(1, np.round(16.0 / np.asarray(grid.spacing_mm)).astype(int))  # ~16 mm squares
    kk, jj, ii = np.ogrid[: grid.shape_zyx[0], : grid.shape_zyx[1], : grid.shape_zyx[2]]
    board = ((kk // tile[2]) + (jj // tile[1]) + (ii // tile[0])) % 2 == 0
    folds = folding_points_lps(result)
    folds_ijk = grid.points_to_index(folds) if len(folds) else np.zeros((0, 3))
    vmax_d = max(1.0, float(np.percentile(magnitude[body], 99))) if body.any() else 1.0
    rows = []
    for name, cut, _, flip in _planes(grid, centre):
        plane = anatomical_plane(grid, name)

        def view(a, cut=cut, flip=flip):
            return _view(cut(a), flip)

        def show(layers, title, name=name, flip=flip, plane=plane):
            return slice_panel(layers, grid, name, flip, REPORT_BOX_PX, f"{plane}: {title}")

        f, b_body = view(fixed), view(body)
        window = ("gray", -1000, 300)
        top = [show([pictures.layer(view(np.where(board, fixed, before)), *window)], "checkerboard before"),
               show([pictures.layer(view(np.where(board, fixed, after)), *window)], "checkerboard after"),
               show([pictures.layer(np.abs(f - view(before)), "magma", 0, 500)], "|ΔHU| before"),
               show([pictures.layer(np.abs(f - view(after)), "magma", 0, 500)], "|ΔHU| after")]
        jac = view(jacobian)
        low = [show([pictures.layer(f, *window), pictures.layer(np.where(b_body, jac, np.nan), **JACOBIAN_COLOURS,
                                                                alpha=0.8),
                     pictures.layer(np.where(b_body & (jac <= 0), 0.0, np.nan), "autumn", 0, 1)],
                    "det J (folding: red ○)"),
               show([pictures.layer(view(magnitude), "viridis", 0, vmax_d)], "|d| and the deformed grid"),
               show([pictures.layer(np.where(b_body, view(maps.residual), np.nan), "inferno", 0, 1)],
                    "doubt: 1 − local NCC")]
        pictures.circles(low[0], *_in_plane(name, centre, grid.shape_zyx, flip, folds_ijk))
        _deformed_grid(low[1], cut, grid, disp, flip)
        height = top[0].image.size[1]
        for p, (cmap, low_v, high_v, label, alpha) in ((top[3], ("magma", 0, 500, "|ΔHU| (HU)", 1.0)),
                                                       (low[0], (JACOBIAN_COLOURS["cmap"], *JACOBIAN_RANGE, "det J", 0.8)),
                                                       (low[1], ("viridis", 0, vmax_d, "|d| (mm)", 1.0)),
                                                       (low[2], ("inferno", 0, 1, "1 − local NCC", 1.0))):
            p.colour_bar = pictures.colour_bar(cmap, low_v, high_v, label, height, alpha)
        low.append(pictures.note(f"{plane} plane at\n{slice_position(grid, name, centre)} (LPS)\n\n"
                                 "letters: the patient's side\neach edge faces"))
        rows += [top, low]
    return pictures.png(pictures.sheet(rows))


def folding_figure(result, maps, clusters: list[dict], rows: int = 3) -> bytes:
    """Where the field folds: per cluster (the largest first, ``clusters`` as
    :func:`quality.folding_clusters` lists them, at most ``rows``), the three planes through
    its worst voxel: the fixed CT, det J over it, red circles at the folding voxels of the
    plane and a cross at the worst voxel. PNG bytes."""
    grid, body = maps.grid, maps.body
    folds = folding_points_lps(result)
    folds_ijk = grid.points_to_index(folds) if len(folds) else np.zeros((0, 3))
    sheet_rows = []
    for r, cluster in enumerate(clusters[:rows]):
        ijk = grid.points_to_index(np.asarray([cluster["worst_lps"]], dtype=np.float64))[0]
        centre = tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(ijk[::-1], grid.shape_zyx))
        lps = ", ".join(f"{v:.1f}" for v in cluster["worst_lps"])
        voxels = f"{cluster['voxels']} voxel{'s' if cluster['voxels'] != 1 else ''}"
        row = [pictures.note(f"fold {r + 1}:\n{voxels}\nworst det J {cluster['worst_det_j']:.2f}\n"
                             f"at LPS\n({lps}) mm")]
        for name, cut, _, flip in _planes(grid, centre):
            def view(a, cut=cut, flip=flip):
                return _view(cut(a), flip)

            p = slice_panel([pictures.layer(view(maps.fixed_hu), "gray", -1000, 300),
                             pictures.layer(np.where(view(body), view(maps.jacobian), np.nan), **JACOBIAN_COLOURS,
                                            alpha=0.6)],
                            grid, name, flip, (240, 240),
                            f"{anatomical_plane(grid, name)} at {slice_position(grid, name, centre)}", scale=r == 0)
            pictures.circles(p, *_in_plane(name, centre, grid.shape_zyx, flip, folds_ijk))
            x, y = _in_plane(name, centre, grid.shape_zyx, flip, ijk[None])
            if x.size:
                pictures.cross(p, x[0], y[0])
            row.append(p)
        row[-1].colour_bar = pictures.colour_bar(JACOBIAN_COLOURS["cmap"], *JACOBIAN_RANGE, "det J (red ○: det J ≤ 0)",
                                                 row[-1].image.size[1], 0.6)
        sheet_rows.append(row)
    return pictures.png(pictures.sheet(sheet_rows))


def _deformed_grid(p: pictures.Panel, cut, grid, disp, flip, every_vox: int = 6) -> None:
    """Grid lines of the fixed grid carried through φ = id + d, drawn on panel ``p``: the lines
    where an in-plane component of φ(x), in the grid's voxels, crosses a multiple of
    ``every_vox``."""
    shape = grid.shape_zyx
    # The plane's own (i, j, k) indices: each axis's index broadcast over the volume (a view),
    # cut to the plane, so that no volume-sized index array is made.
    index = [np.broadcast_to(np.arange(n).reshape([-1 if a == axis else 1 for a in range(3)]), shape)
             for axis, n in ((2, shape[2]), (1, shape[1]), (0, shape[0]))]
    plane_index = np.stack([np.asarray(cut(a)) for a in index], -1)  # (rows, cols, [i, j, k])
    moved_vox = np.asarray(cut(disp)) @ np.linalg.inv(grid.direction_matrix @ np.diag(grid.spacing_mm)).T
    plane_idx = plane_index.astype(np.float64) + moved_vox
    rows, cols = plane_idx.shape[:2]
    varying = [a for a in range(3) if np.ptp(plane_index[..., a]) > 0]  # the plane's two index axes
    if rows > 1 and cols > 1:
        for a in varying:
            pictures.level_lines(p, _view(plane_idx[..., a], flip), every_vox)


def tre_histogram(before_mm, network_mm, after_mm, refined: bool) -> bytes:
    """The landmark TRE histograms: before, after the network alone, after refinement. PNG bytes."""
    return pictures.png(tre_picture(before_mm, network_mm, after_mm, refined))


def quality_histogram(maps) -> bytes:
    """Distributions in the lungs: the doubt map (1 − local NCC) and the inverse-consistency
    error, counts on a log axis. PNG bytes."""
    doubt = maps.residual[maps.lungs]
    err = maps.inverse_error_mm[maps.consistency_lungs]
    top = max(float(err.max()) if err.size else 0.0, 1e-3)
    return pictures.png(pictures.beside(
        pictures.histogram([(doubt, "lung voxels", (148, 103, 189))], np.linspace(0, 2, 51), "1 − local NCC (lungs)",
                           "voxels", (380, 280), log=True),
        pictures.histogram([(err, "lung voxels", (44, 160, 44))], np.linspace(0, top * 1.02, 51),
                           "|φ∘φ⁻¹ − id| in the lungs (mm)", "voxels", (380, 280), log=True)))
