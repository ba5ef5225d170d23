"""The quality checks of a registration (AAPM TG-132) and the map of where not to trust it.

TG-132 (Brock et al., Med. Phys. 2017) asks, before a deformable registration is used for
contours or dose: a visual review, landmark TRE, agreement of propagated contours, the
Jacobian determinant and consistency. Each check here is a number judged against a
tolerance (:mod:`.tolerances`: TG-132's values where it gives one, the project's own
elsewhere, each row saying which; overridable from a small YAML/JSON file), as PASS, WARN
or FAIL.

The overall verdict (:func:`quality_summary`): FAIL when the registration as a whole cannot
be used (a check that can fail is beyond its fail limit: the mean TRE, a large share of
landmarks beyond TG-132's 5 mm, folding above a share, the lungs' similarity not improved
by the registration, ...); WARN when something needs a reviewer's look (a few outlier
landmarks, named; a little folding, located); PASS otherwise; and UNVERIFIED (accuracy not
verified) instead of PASS or WARN when no landmark pair or contour measured the accuracy.
Rows that cannot fail, such as the inverse consistency through the field's own fixed-point
inverse, are information, outside the verdict.

Everything lives on the transform's grid (``Result.out_grid``, the fixed image's grid or a
subsampling of it): images and maps are ``[k, j, i]`` arrays, distances in mm, positions LPS
(docs/CONVENTIONS.md, "Registration quality").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core.grid import Grid, resample
from ..core.metrics import worse_after_refinement
from ..core.transforms import invert_displacement
from ..core.warp import warp_moving
from .engine import Result
from .refine import box_sum
from .tolerances import (
    ACCURACY_CHECKS,
    CHECK_LABELS,
    DEFAULT_TOLERANCES,
    INFO_LABELS,
    INVERSE_NOTE,
    UNVERIFIED,
    Tolerance,
    format_number,
    limit_text,
    tolerance_text,
    value_text,
)

#: Local NCC window: (2r+1)³ voxels of the transform's grid.
NCC_RADIUS_VOX = 2
#: The image-agreement maps are computed on the transform's grid subsampled to at most this many voxels.
QUALITY_MAX_VOXELS = 2_000_000
#: The inverse-consistency map is computed on a grid of at most this many voxels.
CONSISTENCY_MAX_VOXELS = 300_000
#: Folding clusters listed in the summary and the report (the largest first).
FOLDING_CLUSTERS_LISTED = 5
#: The lungs' NCC gain may drop by this much when the images already agreed before registration.
NCC_ALREADY_AGREED_SLACK = 0.02

# --- maps ---------------------------------------------------------------------------------

def local_ncc(a: np.ndarray, b: np.ndarray, radius: int = NCC_RADIUS_VOX, eps: float = 1e-3) -> np.ndarray:
    """Normalised cross-correlation of ``a`` and ``b`` (same-shape ``[k, j, i]`` arrays) in the
    ``(2r+1)³`` window around each voxel; 0 where either window is flat (variance ≤ ``eps``·n)."""
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    sums = box_sum(torch.stack([x, y, x * x, y * y, x * y]), radius)
    n = box_sum(torch.ones((1, *x.shape)), radius)[0]
    s_x, s_y, s_xx, s_yy, s_xy = sums
    cov = s_xy - s_x * s_y / n
    var_x = (s_xx - s_x * s_x / n).clamp_min(0.0)
    var_y = (s_yy - s_y * s_y / n).clamp_min(0.0)
    flat = (var_x <= eps * n) | (var_y <= eps * n)
    ncc = torch.where(flat, 0.0, cov / torch.sqrt(var_x * var_y).clamp_min(1e-12))
    return ncc.clamp(-1.0, 1.0).numpy()


@dataclass
class QualityMaps:
    """Where the result is doubtful, on the transform's grid (``residual``) and on a grid of
    at most :data:`CONSISTENCY_MAX_VOXELS` (``inverse_error_mm``)."""

    grid: Grid                      #: the transform's grid, subsampled to at most QUALITY_MAX_VOXELS
    body: np.ndarray                #: the fixed body mask on ``grid``
    lungs: np.ndarray               #: the fixed lung field on ``grid`` (the body where none was found)
    jacobian: np.ndarray            #: det J on ``grid``
    displacement: np.ndarray        #: φ(x) − x on ``grid``, ``[k, j, i, 3]`` LPS mm
    fixed_hu: np.ndarray            #: the fixed image on ``grid`` (HU)
    before_hu: np.ndarray           #: the moving image on ``grid``, unregistered (HU)
    after_hu: np.ndarray            #: the moving image through φ on ``grid`` (HU)
    residual: np.ndarray            #: 1 − local NCC of fixed and warped moving (0 outside the body)
    ncc_before: np.ndarray          #: local NCC of fixed and moving, unregistered
    ncc_after: np.ndarray           #: local NCC of fixed and warped moving
    abs_hu_before: np.ndarray       #: |fixed − moving| (HU)
    abs_hu_after: np.ndarray        #: |fixed − warped moving| (HU)
    consistency_grid: Grid
    inverse_error_mm: np.ndarray    #: |φ(y + e(y)) − y| of the fixed-point inverse e (mm)
    consistency_lungs: np.ndarray   #: the lung mask on ``consistency_grid``

    def residual_image(self) -> sitk.Image:
        return self.grid.apply_to(sitk.GetImageFromArray(self.residual.astype(np.float32)))

    def inverse_error_image(self) -> sitk.Image:
        return self.consistency_grid.apply_to(sitk.GetImageFromArray(self.inverse_error_mm.astype(np.float32)))


def quality_maps(result: Result, fixed: sitk.Image, moving: sitk.Image) -> QualityMaps:
    """The maps of :class:`QualityMaps` for ``result`` (``fixed``, ``moving``: the registered CT, HU)."""
    out = result.out_grid
    grid, on_grid = subsampling(out, QUALITY_MAX_VOXELS)
    body = result.body_mask[on_grid]
    lungs = result.lung_mask if result.lung_mask is not None and result.lung_mask.any() else result.body_mask
    disp = sitk.GetArrayViewFromImage(result.displacement)[on_grid]
    fixed_hu = sitk.GetArrayFromImage(resample(fixed, grid))
    before_hu = sitk.GetArrayFromImage(resample(moving, grid))
    if result.warped is not None and Grid.from_image(result.warped) == grid:
        after_hu = sitk.GetArrayFromImage(result.warped).astype(np.float32)
    else:
        after_hu = sitk.GetArrayFromImage(warp_moving(moving, grid, result.displacement, -1024.0)).astype(np.float32)
    ncc_before, ncc_after = local_ncc(fixed_hu, before_hu), local_ncc(fixed_hu, after_hu)
    residual = np.where(body, 1.0 - ncc_after, 0.0).astype(np.float32)
    coarse, on_coarse = subsampling(out, CONSISTENCY_MAX_VOXELS)
    _, _, error = invert_displacement(result.displacement, coarse, residual_map=True)
    return QualityMaps(grid, body, lungs[on_grid], result.jacobian[on_grid], np.array(disp), fixed_hu, before_hu,
                       after_hu, residual, ncc_before, ncc_after, np.abs(fixed_hu - before_hu),
                       np.abs(fixed_hu - after_hu), coarse, error, lungs[on_coarse])


def subsampling(grid: Grid, max_voxels: int) -> tuple[Grid, tuple]:
    """(``grid`` subsampled to at most ``max_voxels``, the index that takes an array on ``grid``
    to it). The subsampled grid reaches the last voxel (:meth:`Grid.subsampled`), so its last
    sample may lie beyond it: that one takes the last voxel's value."""
    stride = consistency_stride(grid, max_voxels)
    coarse = grid.subsampled(stride)
    kji = [np.minimum(np.arange(n) * s, m - 1) for n, s, m in zip(coarse.shape_zyx, stride[::-1], grid.shape_zyx)]
    return coarse, np.ix_(*kji)


def consistency_stride(grid: Grid, max_voxels: int = CONSISTENCY_MAX_VOXELS) -> tuple[int, int, int]:
    """The smallest isotropic-in-mm stride that brings ``grid`` under ``max_voxels``."""
    stride = [1, 1, 1]
    while np.prod([math.ceil(n / s) for n, s in zip(grid.size, stride)]) > max_voxels:
        finest = int(np.argmin([sp * s for sp, s in zip(grid.spacing_mm, stride)]))
        stride[finest] += 1
    return tuple(stride)


# --- contours -----------------------------------------------------------------------------

def contour_agreement(fixed_labels: sitk.Image, propagated: sitk.Image) -> dict[int, dict]:
    """Per label present in either map: Dice, mean surface distance and HD95 (mm, symmetric,
    between the labels' surfaces) of the fixed image's contour and the moving one carried
    onto the fixed grid. Both label maps on the same grid."""
    a_all = sitk.GetArrayViewFromImage(fixed_labels)
    b_all = sitk.GetArrayViewFromImage(propagated)
    labels = sorted((set(np.unique(a_all)) | set(np.unique(b_all))) - {0})
    out = {}
    for label in labels:
        a, b = a_all == label, b_all == label
        total = int(a.sum() + b.sum())
        dice = 2.0 * float((a & b).sum()) / total if total else float("nan")
        distances = np.concatenate([_surface_distances(a, b, fixed_labels), _surface_distances(b, a, fixed_labels)])
        out[int(label)] = {"dice": dice, "voxels_fixed": int(a.sum()), "voxels_moving": int(b.sum()),
                           "mean_surface_distance_mm": float(distances.mean()) if distances.size else float("nan"),
                           "hd95_mm": float(np.percentile(distances, 95)) if distances.size else float("nan")}
    return out


def _surface_distances(a: np.ndarray, b: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``."""
    if not a.any() or not b.any():
        return np.zeros(0)

    def image(mask):
        im = sitk.GetImageFromArray(mask.astype(np.uint8))
        im.CopyInformation(reference)
        return im

    # GetArrayFromImage (a copy), not a view: a view dies with the temporary image it shows.
    surface_a = sitk.GetArrayFromImage(sitk.LabelContour(image(a), fullyConnected=False)) > 0
    to_b = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(
        sitk.LabelContour(image(b), fullyConnected=False), insideIsPositive=False, squaredDistance=False,
        useImageSpacing=True)))
    return np.asarray(to_b[surface_a], dtype=np.float64)


# --- the checks ---------------------------------------------------------------------------

def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max()), "n": int(v.size)}


def _share(beyond: np.ndarray, what: str, text: str) -> dict:
    """How many of the items ``beyond`` (a bool array over them) are beyond the limit ``text``."""
    count, of = int(np.count_nonzero(beyond)), int(np.size(beyond))
    return {"what": what, "beyond": text, "count": count, "of": of,
            "percent": 100.0 * count / of if of else float("nan")}


def _lps(grid: Grid, kji) -> list[float]:
    """The LPS position (mm, rounded to 0.1 mm) of the voxel ``[k, j, i]`` of ``grid``."""
    ijk = np.asarray(kji, dtype=np.float64)[..., ::-1].reshape(1, 3)
    return [round(float(v), 1) for v in grid.points_to_lps(ijk)[0]]


def folding_clusters(result: Result, listed: int = FOLDING_CLUSTERS_LISTED) -> tuple[int, list[dict]]:
    """Where the field folds: the connected clusters (26-neighbourhood) of body voxels with
    det J ≤ 0 on the transform's grid. Returns (how many clusters, the ``listed`` largest:
    voxels, volume (mm³), centre and worst voxel (LPS mm), the worst det J there, and how
    many of its voxels lie in the lungs)."""
    folded = result.body_mask & (result.jacobian <= 0)
    if not folded.any():
        return 0, []
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(folded.astype(np.uint8)), True))
    sizes = np.bincount(labels.ravel())[1:]
    grid = result.out_grid
    lungs = result.lung_mask if result.lung_mask is not None else np.zeros_like(folded)
    voxel_mm3 = float(np.prod(grid.spacing_mm))
    out = []
    for label in np.argsort(-sizes, kind="stable")[:listed] + 1:
        where = np.nonzero(labels == label)
        jac = result.jacobian[where]
        worst = int(np.argmin(jac))
        out.append({"voxels": int(jac.size), "volume_mm3": round(jac.size * voxel_mm3, 2),
                    "centre_lps": _lps(grid, np.mean(np.stack(where, -1), axis=0)),
                    "worst_lps": _lps(grid, [w[worst] for w in where]), "worst_det_j": float(jac[worst]),
                    "in_lungs": int(np.count_nonzero(lungs[where]))})
    return int(sizes.size), out


def _landmark_list(result: Result, which: np.ndarray, labels: list[str], at_most: int = 100) -> list[dict]:
    """The landmark pairs ``which`` (indices), worst TRE first: 1-based index (the row of
    ``tre.csv``), label, TRE after (mm), fixed position (LPS mm)."""
    lm = result.landmarks
    order = sorted(which, key=lambda i: -float(lm["after_mm"][i]))[:at_most]
    return [{"index": int(i) + 1, "label": labels[i] if i < len(labels) else str(int(i) + 1),
             "tre_mm": round(float(lm["after_mm"][i]), 3),
             "fixed_lps": [round(float(v), 1) for v in lm["fixed_lps"][i]]} for i in order]


def landmark_names(outliers: list[dict], shown: int = 5) -> str:
    """"8 (15.1 mm), L23 (6.02 mm)": the outliers as the verdict names them."""
    names = [f"{o['label']} ({format_number(o['tre_mm'])} mm)" for o in outliers[:shown]]
    more = len(outliers) - shown
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def pleura_band(result: Result) -> np.ndarray:
    """The transform grid's voxels within one voxel of the pleura (the lungs' outer surface,
    :meth:`lungs.ThoraxMasks.pleura_on`), inside the body: bool ``[k, j, i]``."""
    return surface_band(result.geometry.fixed_masks.pleura_on(result.out_grid)) & result.body_mask


def surface_band(inside: np.ndarray) -> np.ndarray:
    """The voxels within one voxel of the surface of ``inside`` (bool ``[k, j, i]``): those whose
    6-neighbourhood (themselves included, neighbours beyond the array left out) holds voxels
    both inside and outside. The same as a dilation and an erosion by a cross of radius 1
    (``sitk.BinaryDilate & ~sitk.BinaryErode``), in shifted views of the array."""
    grown, shrunk = inside.copy(), inside.copy()
    for axis in range(3):
        ahead = [slice(None)] * 3
        behind = [slice(None)] * 3
        for a, b in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            ahead[axis], behind[axis] = a, b
            grown[tuple(ahead)] |= inside[tuple(behind)]
            shrunk[tuple(ahead)] &= inside[tuple(behind)]
    return grown & ~shrunk


def quality_summary(result: Result, maps: QualityMaps, tolerances: dict[str, Tolerance] | None = None,
                    contours: dict[int, dict] | None = None, tolerances_file: str | None = None,
                    labels: list[str] | None = None) -> dict:
    """``summary.json``'s ``quality``: the measured numbers, the check table (one row per check:
    name, label, value, warn, fail, verdict, source, kind, and where it applies the share of
    landmarks or voxels beyond the tolerance and the outlier landmarks), the information rows
    (outside the verdict), the folding clusters, and the overall verdict with its reasons.
    ``labels``: the landmark pairs' names (default: their 1-based numbers)."""
    tol = tolerances or DEFAULT_TOLERANCES
    body = result.body_mask
    lungs = result.lung_mask if result.lung_mask is not None and result.lung_mask.any() else body
    jac_lungs = result.jacobian[lungs]
    n_clusters, clusters = folding_clusters(result)
    measured: dict = {
        "jacobian_min": float(result.jacobian[body].min()) if body.any() else float("nan"),
        "folding_percent": float(result.folding_percent),
        "folding_voxels": int(np.count_nonzero(body & (result.jacobian <= 0))),
        "folding_clusters": n_clusters,
        "lung_jacobian_outside_percent": float(100.0 * np.mean((jac_lungs < 0.5) | (jac_lungs > 2.0)))
        if jac_lungs.size else float("nan"),
        # ∫_lungs det J / ∫_lungs 1 − 1: the lungs' volume in the moving image against the fixed one
        "lung_volume_change_percent": float(100.0 * (jac_lungs.mean() - 1.0)) if jac_lungs.size else float("nan"),
        "inverse_consistency_mm": _stats(maps.inverse_error_mm[maps.consistency_lungs]),
        "lung_ncc": {"before": float(maps.ncc_before[maps.lungs].mean()),
                     "after": float(maps.ncc_after[maps.lungs].mean())},
        "lung_abs_hu_difference": {"before": float(maps.abs_hu_before[maps.lungs].mean()),
                                   "after": float(maps.abs_hu_after[maps.lungs].mean())},
        "residual_in_lungs": {"mean": float(maps.residual[maps.lungs].mean()),
                              "p95": float(np.percentile(maps.residual[maps.lungs], 95))},
    }
    rows: list[dict] = []
    information: list[dict] = []

    def row(name, value, label=None, key=None, shares=(), t=None, **extra):
        t = t or tol[name]
        rows.append({"check": key or name, "label": label or CHECK_LABELS[name], "value": value, "warn": t.warn,
                     "fail": t.fail, "higher_is_better": t.higher_is_better, "verdict": t.verdict(value),
                     "can_fail": t.can_fail, "source": t.source,
                     "kind": "accuracy" if name in ACCURACY_CHECKS else "plausibility", "shares": list(shares),
                     **extra})

    def info(name, value, note=""):
        information.append({"check": name, "label": INFO_LABELS[name], "value": value, "note": note})

    labels = list(labels or [])
    not_measured = []
    if result.landmarks is not None:
        used = np.flatnonzero(result.landmarks["used"])
        after = np.asarray(result.landmarks["after_mm"], dtype=np.float64)
        tre = _stats(after[used])
        measured["tre_mm"] = tre
        mean_tol, out_tol, p95_tol = tol["tre_mean_mm"], tol["tre_outliers_percent"], tol["tre_p95_mm"]
        mean_limit = mean_tol.fail if mean_tol.fail is not None else mean_tol.warn
        limit = out_tol.limit
        beyond = used[after[used] > limit]
        outlier_share = 100.0 * beyond.size / used.size if used.size else float("nan")
        row("tre_mean_mm", tre["mean"],
            shares=[_share(after[used] > mean_limit, "landmarks", f"> {limit_text(mean_limit)} mm")])
        row("tre_outliers_percent", outlier_share, CHECK_LABELS["tre_outliers_percent"].format(limit=limit_text(limit)),
            shares=[_share(after[used] > limit, "landmarks", f"> {limit_text(limit)} mm")],
            outliers=_landmark_list(result, beyond, labels), limit_mm=limit)
        row("tre_p95_mm", tre["p95"], shares=[_share(after[used] > p95_tol.warn, "landmarks",
                                                     f"> {limit_text(p95_tol.warn)} mm")])
        worst = _landmark_list(result, used, labels, 1)
        info("tre_max_mm", tre["max"], f"landmark {worst[0]['label']}" if worst else "")
        if result.refinement is not None:
            network = np.asarray(result.landmarks["network_mm"], dtype=np.float64)
            worse = used[worse_after_refinement(network[used], after[used])]
            worse = worse[np.argsort(-(after[worse] - network[worse]), kind="stable")]
            listed = [{"index": int(i) + 1, "label": labels[i] if i < len(labels) else str(int(i) + 1),
                       "network_mm": round(float(network[i]), 3), "after_mm": round(float(after[i]), 3)} for i in worse]
            measured["worse_after_refinement"] = listed
            info("landmarks_worse_after_refinement", len(listed),
                 ", ".join(f"{w['label']} {format_number(w['network_mm'])} → {format_number(w['after_mm'])} mm"
                           for w in listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
                 + (" (tre.csv: worse_after_refinement)" if listed else ""))
        if not used.size:
            not_measured.append("landmark TRE: no landmark pair lies inside both images")
    else:
        not_measured.append("landmark TRE: no landmark pairs were given")

    folded_body = body & (result.jacobian <= 0)
    fold_shares = [_share(folded_body[body], "body voxels", "with det J ≤ 0"),
                   _share(result.jacobian[lungs] <= 0, "lung voxels", "with det J ≤ 0")]
    row("folding_percent", measured["folding_percent"], shares=fold_shares, clusters=clusters)
    j_tol = tol["jacobian_min"]
    row("jacobian_min", measured["jacobian_min"],
        shares=[_share(jac_lungs < j_tol.warn, "lung voxels", f"with det J < {limit_text(j_tol.warn)}")])
    row("lung_jacobian_outside_percent", measured["lung_jacobian_outside_percent"],
        shares=[_share((jac_lungs < 0.5) | (jac_lungs > 2.0), "lung voxels", "with det J outside [0.5, 2]")])

    ncc = measured["lung_ncc"]
    gain_tol, after_tol = tol["lung_ncc_gain"], tol["lung_ncc_after"]
    agreed_before = ncc["before"] >= after_tol.warn
    if agreed_before:  # nothing to improve: judged only on not getting worse
        slack = -NCC_ALREADY_AGREED_SLACK
        gain_tol = Tolerance(slack, slack, True, file=gain_tol.file)
    row("lung_ncc_gain", ncc["after"] - ncc["before"], t=gain_tol, before=ncc["before"], after=ncc["after"],
        already_agreed=agreed_before,
        note=(f"the images already agreed before registration (NCC ≥ {limit_text(after_tol.warn)}): judged on "
              "not getting worse" if agreed_before else "FAIL: the registration did not improve the lungs' "
                                                         "similarity (or made it worse)"))
    row("lung_ncc_after", ncc["after"],
        shares=[_share(maps.ncc_after[maps.lungs] < after_tol.warn, "lung voxels",
                       f"with local NCC < {limit_text(after_tol.warn)}")])
    hu_tol = tol["lung_abs_hu_difference_after"]
    row("lung_abs_hu_difference_after", measured["lung_abs_hu_difference"]["after"],
        shares=[_share(maps.abs_hu_after[maps.lungs] > hu_tol.warn, "lung voxels",
                       f"with |ΔHU| > {limit_text(hu_tol.warn)}")],
        note="the lungs' density differs between breathing phases, so |ΔHU| stays above 0 after a perfect "
             "registration: it can warn, not fail")
    if contours:
        measured["contours"] = {str(k): v for k, v in contours.items()}
        for label, c in contours.items():
            for name in ("dice", "mean_surface_distance_mm", "hd95_mm"):
                row(name, c[name], CHECK_LABELS[name].format(label=label), f"{name}[{label}]")
    else:
        not_measured.append("contour agreement: no fixed and moving segmentations were given")

    ic = measured["inverse_consistency_mm"]
    info("inverse_consistency_mean_mm", ic["mean"], INVERSE_NOTE)
    info("inverse_consistency_p95_mm", ic["p95"], INVERSE_NOTE)
    info("inverse_consistency_max_mm", ic["max"], INVERSE_NOTE)
    info("lung_ncc_before", ncc["before"])
    info("lung_abs_hu_difference_before", measured["lung_abs_hu_difference"]["before"])
    info("lung_volume_change_percent", measured["lung_volume_change_percent"])
    info("residual_in_lungs_mean", measured["residual_in_lungs"]["mean"], "quality.nrrd")
    pleura = pleura_band(result)
    if pleura.any():
        jac = result.jacobian[pleura]
        measured["pleura_jacobian"] = {"min": float(jac.min()), "max": float(jac.max()),
                                       "folding_percent": float(100.0 * np.mean(jac <= 0)), "voxels": int(jac.size)}
        info("pleura_jacobian_min", measured["pleura_jacobian"]["min"],
             f"det J from {format_number(jac.min())} to {format_number(jac.max())} there, "
             f"{format_number(measured['pleura_jacobian']['folding_percent'])} % ≤ 0: where the lungs slide along the "
             "chest wall the field may shear, but a gap (det J far above 1) or an overlap (≤ 0) would show here")

    verdicts = [r["verdict"] for r in rows]
    checks_verdict = "FAIL" if "FAIL" in verdicts else "WARN" if "WARN" in verdicts else "PASS"
    verified = any(r["kind"] == "accuracy" and r["verdict"] != "n/a" for r in rows)
    overall = checks_verdict if checks_verdict == "FAIL" or verified else UNVERIFIED
    return {"overall": overall, "checks_verdict": checks_verdict, "accuracy_verified": verified,
            "reasons": _reasons(rows, verified, not_measured), "not_measured": not_measured, "checks": rows,
            "information": information, "folding_clusters": clusters, "measured": measured,
            "tolerances_file": tolerances_file, "ncc_radius_vox": NCC_RADIUS_VOX,
            "maps_grid": {"size": list(maps.grid.size), "spacing_mm": list(maps.grid.spacing_mm)},
            "consistency_grid": {"size": list(maps.consistency_grid.size),
                                 "spacing_mm": list(maps.consistency_grid.spacing_mm)}}


def _reasons(rows: list[dict], verified: bool, not_measured: list[str]) -> list[str]:
    """Why the overall verdict is what it is, one sentence per check beyond its tolerance (the
    failures first), then what was not measured."""
    out = []
    for verdict in ("FAIL", "WARN"):
        for r in rows:
            if r["verdict"] != verdict:
                continue
            text = f"{verdict}: {r['label']} = {value_text(r)} ({tolerance_text(r)})"
            if r.get("outliers"):
                text += f"; beyond {limit_text(r['limit_mm'])} mm: landmark {landmark_names(r['outliers'])}"
            elif r.get("clusters"):
                c = r["clusters"][0]
                text += (f"; {r['shares'][0]['count']} voxels in {len(r['clusters'])}"
                         f"{'+' if len(r['clusters']) == FOLDING_CLUSTERS_LISTED else ''} cluster(s), the largest "
                         f"({c['voxels']} voxels) at LPS ({', '.join(f'{v:.1f}' for v in c['centre_lps'])}) mm")
            elif r["check"] == "lung_ncc_gain":
                text += f"; NCC {format_number(r['before'])} before, {format_number(r['after'])} after"
            out.append(text)
    if not verified:
        out.append("accuracy not verified: " + "; ".join(not_measured or ["no landmark or contour check could be "
                                                                          "measured"]))
    return out
