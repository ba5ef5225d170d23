"""The quality checks of a registration (AAPM TG-132) and the map of where not to trust it.

TG-132 (Brock et al., Med. Phys. 2017) asks, before a deformable registration is used for
contours or dose: a visual review, landmark TRE, agreement of propagated contours, the
Jacobian determinant and consistency. Each check here is a number judged against a
tolerance (:data:`DEFAULT_TOLERANCES`, the report's own values where it gives them,
overridable from a small YAML/JSON file), as PASS, WARN or FAIL.

Everything lives on the transform's grid (``Result.out_grid``, the fixed image's grid or a
subsampling of it): images and maps are ``[k, j, i]`` arrays, distances in mm, positions LPS
(docs/CONVENTIONS.md, "Registration quality").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..core.errors import InputError
from ..core.grid import Grid, resample
from ..core.transforms import invert_displacement
from ..core.warp import warp_moving
from .engine import Result
from .refine import box_sum

#: Local NCC window: (2r+1)³ voxels of the transform's grid.
NCC_RADIUS_VOX = 2
#: The image-agreement maps are computed on the transform's grid subsampled to at most this many voxels.
QUALITY_MAX_VOXELS = 2_000_000
#: The inverse-consistency map is computed on a grid of at most this many voxels.
CONSISTENCY_MAX_VOXELS = 300_000


@dataclass(frozen=True)
class Tolerance:
    """A check's limits: PASS up to ``warn``, WARN up to ``fail``, FAIL beyond (reversed
    when ``higher_is_better``). ``source``: where the numbers come from."""

    warn: float
    fail: float
    higher_is_better: bool = False
    source: str = "project default"

    def verdict(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return "n/a"
        sign = -1.0 if self.higher_is_better else 1.0
        if sign * value <= sign * self.warn:
            return "PASS"
        return "WARN" if sign * value <= sign * self.fail else "FAIL"


TG132 = "AAPM TG-132 (Latifi et al. 2018)"
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "tre_mean_mm": Tolerance(1.5, 2.0, source=TG132),
    "tre_p95_mm": Tolerance(3.0, 4.0),
    "tre_max_mm": Tolerance(4.0, 5.0, source=TG132),
    "jacobian_min": Tolerance(0.2, 0.0, higher_is_better=True, source="AAPM TG-132 (no folding)"),
    "folding_percent": Tolerance(0.0, 0.01, source="AAPM TG-132 (no folding)"),
    "lung_jacobian_outside_percent": Tolerance(5.0, 10.0),
    "inverse_consistency_mean_mm": Tolerance(0.5, 1.0),
    "inverse_consistency_p95_mm": Tolerance(1.0, 2.0),
    "inverse_consistency_max_mm": Tolerance(3.0, 5.0),
    "lung_ncc_after": Tolerance(0.8, 0.6, higher_is_better=True),
    "lung_abs_hu_difference_after": Tolerance(60.0, 100.0),
    "dice": Tolerance(0.85, 0.8, higher_is_better=True, source="AAPM TG-132"),
    "mean_surface_distance_mm": Tolerance(2.0, 3.0, source="AAPM TG-132"),
    "hd95_mm": Tolerance(3.0, 5.0),
}

#: What each check measures, for the report's table.
CHECK_LABELS = {
    "tre_mean_mm": "landmark TRE, mean (mm)",
    "tre_p95_mm": "landmark TRE, 95th percentile (mm)",
    "tre_max_mm": "landmark TRE, maximum (mm)",
    "jacobian_min": "Jacobian determinant, minimum in the body",
    "folding_percent": "folding: body voxels with det J ≤ 0 (%)",
    "lung_jacobian_outside_percent": "lung voxels with det J outside [0.5, 2] (%)",
    "inverse_consistency_mean_mm": "inverse consistency |φ∘φ⁻¹ − id| in the lungs, mean (mm)",
    "inverse_consistency_p95_mm": "inverse consistency in the lungs, 95th percentile (mm)",
    "inverse_consistency_max_mm": "inverse consistency in the lungs, maximum (mm)",
    "lung_ncc_after": "image agreement in the lungs: local NCC after",
    "lung_abs_hu_difference_after": "image agreement in the lungs: mean |ΔHU| after",
    "dice": "contour {label}: Dice",
    "mean_surface_distance_mm": "contour {label}: mean surface distance (mm)",
    "hd95_mm": "contour {label}: Hausdorff distance, 95th percentile (mm)",
}


def load_tolerances(path: str | Path | None) -> dict[str, Tolerance]:
    """The default tolerances, with those of ``path`` (YAML or JSON: ``{check: {warn: x, fail: y}}``) in
    their place; InputError for an unknown check or a malformed entry."""
    tolerances = dict(DEFAULT_TOLERANCES)
    if path is None:
        return tolerances
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--tolerances {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        raise InputError(f"--tolerances {path}: cannot parse it ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"--tolerances {path}: expected a mapping of check names to {{warn, fail}}")
    for name, entry in data.items():
        if name not in tolerances:
            raise InputError(f"--tolerances {path}: unknown check {name!r} (known: {', '.join(tolerances)})")
        if not isinstance(entry, dict) or set(entry) - {"warn", "fail"} or not entry:
            raise InputError(f"--tolerances {path}: {name} needs warn and/or fail numbers")
        try:
            values = {k: float(v) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise InputError(f"--tolerances {path}: {name}: warn and fail must be numbers") from None
        old = tolerances[name]
        tolerances[name] = Tolerance(values.get("warn", old.warn), values.get("fail", old.fail), old.higher_is_better,
                                     f"{path.name}")
    return tolerances


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
        return {"mean": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "p95": float(np.percentile(v, 95)), "max": float(v.max()), "n": int(v.size)}


def quality_summary(result: Result, maps: QualityMaps, tolerances: dict[str, Tolerance] | None = None,
                    contours: dict[int, dict] | None = None, tolerances_file: str | None = None) -> dict:
    """``summary.json``'s ``quality``: the measured numbers and the check table (one row per
    check: name, label, value, warn, fail, verdict, source)."""
    tol = tolerances or DEFAULT_TOLERANCES
    lungs = result.lung_mask if result.lung_mask is not None and result.lung_mask.any() else result.body_mask
    jac_lungs = result.jacobian[lungs]
    measured: dict = {
        "jacobian_min": float(result.jacobian[result.body_mask].min()) if result.body_mask.any() else float("nan"),
        "folding_percent": float(result.folding_percent),
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
    rows = []

    def row(name, value, label=None, key=None):
        t = tol[name]
        rows.append({"check": key or name, "label": label or CHECK_LABELS[name], "value": value, "warn": t.warn,
                     "fail": t.fail, "higher_is_better": t.higher_is_better, "verdict": t.verdict(value),
                     "source": t.source})

    if result.landmarks is not None:
        tre = _stats(result.landmarks["after_mm"][result.landmarks["used"]])
        measured["tre_mm"] = tre
        row("tre_mean_mm", tre["mean"])
        row("tre_p95_mm", tre["p95"])
        row("tre_max_mm", tre["max"])
    row("jacobian_min", measured["jacobian_min"])
    row("folding_percent", measured["folding_percent"])
    row("lung_jacobian_outside_percent", measured["lung_jacobian_outside_percent"])
    ic = measured["inverse_consistency_mm"]
    row("inverse_consistency_mean_mm", ic["mean"])
    row("inverse_consistency_p95_mm", ic["p95"])
    row("inverse_consistency_max_mm", ic["max"])
    row("lung_ncc_after", measured["lung_ncc"]["after"])
    row("lung_abs_hu_difference_after", measured["lung_abs_hu_difference"]["after"])
    if contours:
        measured["contours"] = {str(k): v for k, v in contours.items()}
        for label, c in contours.items():
            for name in ("dice", "mean_surface_distance_mm", "hd95_mm"):
                row(name, c[name], CHECK_LABELS[name].format(label=label), f"{name}[{label}]")
    verdicts = [r["verdict"] for r in rows]
    overall = "FAIL" if "FAIL" in verdicts else "WARN" if "WARN" in verdicts else "PASS"
    return {"overall": overall, "checks": rows, "measured": measured, "tolerances_file": tolerances_file,
            "ncc_radius_vox": NCC_RADIUS_VOX,
            "maps_grid": {"size": list(maps.grid.size), "spacing_mm": list(maps.grid.spacing_mm)},
            "consistency_grid": {"size": list(maps.consistency_grid.size),
                                                                   "spacing_mm": list(maps.consistency_grid.spacing_mm)}}

