"""Registration end to end: two CT images in, a physical transform and its checks out.

Stages (each timed, each reported to a progress callback):

1. ``crop``: each image cropped around its own lung field and resampled to the model's N³;
2. ``network``: Gaussian gradient magnitude of both, one forward pass -> u (voxels);
3. ``refine`` (optional, :mod:`refine`): a short optimisation of a displacement v added to
   the network's field, on the CT itself, coarse to fine;
4. ``transform``: u (+ v) -> φ(x) - x (LPS mm) on the fixed image's grid or one no coarser
   than the network grid and the refinement's finest grid (:mod:`transforms`);
5. ``jacobian``: det(I + ∂d/∂x) on that grid, folding inside the fixed body mask;
6. ``warp``: the moving image resampled onto the fixed grid through that transform
   (:mod:`warp`: ITK's resampler's values, computed in one compiled kernel);
7. ``landmarks``: fixed landmarks through φ, TRE before, after the network alone, and
   after refinement.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn

from . import fields, warp
from .config import NetworkConfig, SynthesisConfig
from .errors import InputError
from .geometry import Grid, ThoraxMasks, check_volume, crop_grid, lung_box, resample, thorax_masks, whole_box
from .landmarks import check_pairs, summary, tre_mm
from .network import UNet
from .refine import DEFAULT as DEFAULT_REFINEMENT
from .refine import RefineConfig, refine
from .synthesis import network_input
from .transforms import (
    displacement_image,
    displacement_lps,
    field_at_points,
    field_transform,
    output_grid,
    transform_points,
)

MODEL_FORMAT, MODEL_VERSION = "progreg-model", 1
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "Resources" / "Models" / "progreg_cpu64.pt"


# --- the model -------------------------------------------------------------------------------

@dataclass
class Model:
    """An inference-ready U-Net (BN folded into the convolutions) and its input settings."""

    net: nn.Module
    synthesis: SynthesisConfig
    path: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.synthesis.size


def fold_batchnorm(net: UNet) -> nn.Module:
    """A copy of ``net`` (eval mode) with every BatchNorm3d folded into the preceding conv.

    ``BN(conv(x)) = conv'(x)`` with ``w' = w·g/σ`` and ``b' = β + (b − μ)·g/σ``: one pass
    less over every feature map, the same numbers up to rounding.
    """
    net = copy.deepcopy(net).eval()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for k in range(len(layers) - 1):
            conv, bn = layers[k], layers[k + 1]
            if isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  bias=True)
                fused.weight.data = conv.weight.data * scale[:, None, None, None, None]
                bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused.bias.data = bn.bias.data + (bias - bn.running_mean) * scale
                module[k] = fused
                module[k + 1] = nn.Identity()
    return net.requires_grad_(False)


def load_model(path: str | Path | None = None, device: str = "cpu", fold_bn: bool = True) -> Model:
    """Load an exported ``model.pt``; InputError if it is missing, corrupt or of another version."""
    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file():
        raise InputError(f"{path}: no such model file" + (" (the bundled model is missing from this install)"
                                                          if path == DEFAULT_MODEL else ""))
    try:
        # weights_only: a model file holds tensors and plain containers; anything else in it
        # (a pickled object) is refused before it can run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise InputError(f"{path}: not a readable model file ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a ProgressiveRegistration model file")
    if state.get("version") != MODEL_VERSION:
        raise InputError(f"{path}: model file version {state.get('version')} is not supported "
                         f"(this version reads {MODEL_VERSION})")
    try:
        cfg = NetworkConfig(**state["network"])
        net = UNet(cfg)
        net.load_state_dict(state["state_dict"])
        syn = SynthesisConfig(**{k: v for k, v in state["input"].items() if k in SynthesisConfig.__dataclass_fields__})
    except (KeyError, TypeError, RuntimeError) as err:
        raise InputError(f"{path}: model file is damaged or incomplete ({err})") from None
    net = fold_batchnorm(net) if fold_bn else net.eval().requires_grad_(False)
    # channels_last_3d: oneDNN's fastest convolution layout on the CPU (benchmarks/results/forward.md).
    net = net.to(device, memory_format=torch.channels_last_3d)
    return Model(net, syn, str(path), {k: state.get(k) for k in ("iterations", "arm")})


def pick_device(device: str) -> tuple[str, str | None]:
    """(device to use, notice or None): CUDA only when asked and available."""
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            return device, None
        return "cpu", "CUDA is not available here: running on the CPU"
    if device != "cpu":
        raise InputError(f"--device {device}: use cpu or cuda")
    return "cpu", None


# --- the registration -----------------------------------------------------------------------

@dataclass
class Result:
    fixed_grid: Grid
    fixed_crop: Grid
    moving_crop: Grid
    out_grid: Grid
    u_vox: torch.Tensor
    displacement: sitk.Image
    jacobian: np.ndarray
    body_mask: np.ndarray
    folding_percent: float
    warped: sitk.Image | None
    seconds: dict
    warnings: list[str]
    fixed_input: torch.Tensor
    moving_input: torch.Tensor
    landmarks: dict | None = None
    #: Per-level record of the refinement (None: the network's field alone).
    refinement: list[dict] | None = None

    def transform(self) -> sitk.Transform:
        return field_transform(self.displacement)


def _crop(image: sitk.Image, syn: SynthesisConfig, what: str, notes: list[str], masks: ThoraxMasks
          ) -> tuple[Grid, torch.Tensor]:
    box = lung_box(image, syn.lung_margin_mm, masks) if syn.crop_to_lungs else None
    if box is None:
        if syn.crop_to_lungs:
            notes.append(f"{what}: no lung field found; the whole image is used (is this a thorax CT in HU?)")
        box = whole_box(image)
    grid = crop_grid(Grid.from_image(image), box, syn.size)
    return grid, torch.from_numpy(sitk.GetArrayFromImage(resample(image, grid)))


def body_mask_on(masks: ThoraxMasks, grid: Grid) -> np.ndarray:
    """The body (with the lung field) of :func:`thorax_masks`, resampled onto ``grid``."""
    on = sitk.Resample(masks.body, grid.reference_image(sitk.sitkUInt8), sitk.Transform(), sitk.sitkNearestNeighbor,
                       0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on).astype(bool)


def _warn_if_unusual(fixed: sitk.Image, moving: sitk.Image, model: Model, fg: Grid, mg: Grid, notes: list[str]):
    ext_f = np.asarray(fg.size) * np.asarray(fg.spacing_mm)
    ext_m = np.asarray(mg.size) * np.asarray(mg.spacing_mm)
    ratio = ext_m / ext_f
    if np.any(ratio > 1.5) or np.any(ratio < 1 / 1.5):
        notes.append(f"the lung crops differ much in size (moving/fixed extent {np.round(ratio, 2).tolist()}): "
                     "very different fields of view?")
    for what, img in (("fixed", fixed), ("moving", moving)):
        sp = np.asarray(img.GetSpacing())
        if sp.max() > 5.0 or sp.min() < 0.3:
            notes.append(f"{what}: voxel spacing {np.round(sp, 2).tolist()} mm is far from typical thorax CT")


def register_images(fixed: sitk.Image, moving: sitk.Image, model: Model | None = None, device: str = "cpu",
                    fixed_points_lps: np.ndarray | None = None, moving_points_lps: np.ndarray | None = None,
                    progress=None, warp_moving: bool = True, refinement: RefineConfig | None = None) -> Result:
    """Register ``moving`` to ``fixed`` (both 3D CT in HU, any geometry).

    ``progress(fraction, message)`` is called at each stage. Landmarks are LPS mm.
    ``refinement``: refine the network's field on the images (:mod:`refine`); None gives the
    network's one-pass result.
    """
    check_volume(fixed, "fixed image")
    check_volume(moving, "moving image")
    if fixed_points_lps is not None or moving_points_lps is not None:
        if fixed_points_lps is None or moving_points_lps is None:
            raise InputError("landmarks: give both fixed and moving landmarks, or neither")
        check_pairs(fixed_points_lps, moving_points_lps)
    device, notice = pick_device(device)
    notes = [notice] if notice else []
    model = model or load_model(None, device)
    report = progress or (lambda fraction, message: None)
    seconds: dict[str, float] = {}

    def stage(name: str, fraction: float, message: str):
        report(fraction, message)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = round(time.perf_counter() - seconds[name], 3)

    f_lo, f_hi = Grid.from_image(fixed).bounding_box_lps()
    m_lo, m_hi = Grid.from_image(moving).bounding_box_lps()
    if np.any(f_hi < m_lo) or np.any(m_hi < f_lo):
        raise InputError("the moving image does not overlap the fixed image at all (check their origins)")

    stage("crop", 0.05, "cropping both images around the lungs")
    fixed_masks, moving_masks = thorax_masks(fixed), thorax_masks(moving)
    fixed_crop, fixed_hu = _crop(fixed, model.synthesis, "fixed image", notes, fixed_masks)
    moving_crop, moving_hu = _crop(moving, model.synthesis, "moving image", notes, moving_masks)
    _warn_if_unusual(fixed, moving, model, fixed_crop, moving_crop, notes)
    done("crop")

    stage("network", 0.25, f"network forward pass ({model.size}³, {device})")
    with torch.inference_mode():
        x = torch.stack([network_input(fixed_hu, model.synthesis), network_input(moving_hu, model.synthesis)])[None]
        x_in = x.to(device).contiguous(memory_format=torch.channels_last_3d)
        u_vox = model.net(x_in).float().cpu()[0].contiguous()
    done("network")

    refined = None
    if refinement is not None:
        stage("refine", 0.3, "refining the field on the images")
        refined = refine(fixed, moving, fixed_crop, lambda grid: displacement_lps(u_vox, fixed_crop, moving_crop, grid),
                         lambda grid: body_mask_on(fixed_masks, grid), refinement,
                         lambda fraction, message: report(0.3 + 0.4 * fraction, message))
        done("refine")

    stage("transform", 0.7, "mapping the field to the fixed image (LPS, mm)")
    fixed_grid = Grid.from_image(fixed)
    out = output_grid(fixed_grid, fixed_crop, refined.grid.spacing_mm if refined is not None else None)
    disp = displacement_lps(u_vox, fixed_crop, moving_crop, out)
    disp_network = None
    if refined is not None:
        disp_network = disp
        disp = disp_network + refined.sample_on(out)
    disp_image = displacement_image(disp, out)
    done("transform")

    stage("jacobian", 0.75, "Jacobian determinant and folding")
    disp_t = torch.from_numpy(disp).movedim(-1, 0)
    jac = fields.jacobian_determinant(disp_t, out.index_to_lps[:3, :3]).numpy()
    body = body_mask_on(fixed_masks, out)
    folding = fields.folding_percent(torch.from_numpy(jac), torch.from_numpy(body))
    done("jacobian")

    warped = None
    if warp_moving:
        stage("warp", 0.8, "resampling the moving image onto the fixed grid")
        warped = warp.warp_moving(moving, fixed_grid, disp_image, -1024.0)
        done("warp")

    result = Result(fixed_grid, fixed_crop, moving_crop, out, u_vox, disp_image, jac, body, folding, warped,
                    seconds, notes, x[0, 0], x[0, 1], refinement=refined.levels if refined is not None else None)
    if fixed_points_lps is not None:
        stage("landmarks", 0.95, "landmark TRE")
        predicted = transform_points(result.transform(), fixed_points_lps)
        before = tre_mm(fixed_points_lps, moving_points_lps)
        after = tre_mm(predicted, moving_points_lps)
        network = after
        if disp_network is not None:
            network = tre_mm(fixed_points_lps + field_at_points(disp_network, out, fixed_points_lps), moving_points_lps)
        result.landmarks = {"fixed_lps": np.asarray(fixed_points_lps), "moving_lps": np.asarray(moving_points_lps),
                            "predicted_lps": predicted, "before_mm": before, "network_mm": network, "after_mm": after}
        done("landmarks")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    report(1.0, "done")
    return result


def summary_of(result: Result, model: Model, device: str) -> dict:
    s = {"folding_percent": result.folding_percent, "seconds": result.seconds, "model": model.path,
         "device": device, "warnings": result.warnings,
         "grid": {"network_size": model.size, "transform_size": list(result.out_grid.size),
                  "transform_spacing_mm": list(result.out_grid.spacing_mm)},
         "jacobian": {"min": float(result.jacobian[result.body_mask].min()) if result.body_mask.any() else None,
                      "max": float(result.jacobian[result.body_mask].max()) if result.body_mask.any() else None}}
    s["refinement"] = {"levels": result.refinement} if result.refinement is not None else None
    if result.landmarks is not None:
        s["tre_before_mm"] = summary(result.landmarks["before_mm"])
        s["tre_network_mm"] = summary(result.landmarks["network_mm"])
        s["tre_after_mm"] = summary(result.landmarks["after_mm"])
    return s


# --- files in, files out ------------------------------------------------------------------------

OUTPUT_FORMATS = ("nrrd", "nii.gz", "h5")


def _landmarks_lps(path, grid: Grid) -> tuple[np.ndarray, list[str]]:
    from .landmarks import read_landmarks

    lm = read_landmarks(path)
    return lm.to_lps(grid=grid), lm.labels


def register_files(fixed: str | Path, moving: str | Path, out: str | Path, fixed_landmarks=None, moving_landmarks=None,
                   model: str | Path | Model | None = None, device: str = "cpu", size: int | None = None,
                   fmt: str = "nrrd", series: tuple[str | None, str | None] = (None, None), progress=None,
                   refinement: RefineConfig | None = DEFAULT_REFINEMENT, write_warped: bool = True,
                   write_overview: bool = True) -> dict:
    """``progreg register`` as a function: read, register, write every output into ``out``.

    Returns the summary (also written as ``summary.json``). Nothing is left in ``out`` if
    anything fails. ``size`` overrides the model's grid (a multiple of 16). ``refinement``:
    None for the network's one-pass field. ``write_warped``/``write_overview``: the warped
    moving image and the overview figure (a caller that shows the transform itself, such as
    Slicer, needs neither).
    """
    import csv
    import json

    from .images import read_image, write_image
    from .io_outputs import write_all

    if fmt not in OUTPUT_FORMATS:
        raise InputError(f"--format {fmt}: use one of {', '.join(OUTPUT_FORMATS)}")
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
        fixed_pts, labels = _landmarks_lps(fixed_landmarks, Grid.from_image(fixed_img))
        moving_pts, _ = _landmarks_lps(moving_landmarks, Grid.from_image(moving_img))
        check_pairs(fixed_pts, moving_pts, f"{fixed_landmarks} / {moving_landmarks}")
    model = model if isinstance(model, Model) else load_model(model, device)
    if size is not None:
        if size <= 0 or size % 2 ** (model.net.levels - 1):
            raise InputError(f"--size {size}: must be a positive multiple of {2 ** (model.net.levels - 1)}")
        model = Model(model.net, SynthesisConfig(**{**model.synthesis.__dict__, "size": size}), model.path, model.meta)
    result = register_images(fixed_img, moving_img, model, device, fixed_pts, moving_pts, progress,
                             warp_moving=write_warped, refinement=refinement)
    summary_dict = summary_of(result, model, device)

    t0 = time.perf_counter()
    from .transforms import write_transform

    jac_image = sitk.GetImageFromArray(result.jacobian.astype(np.float32))
    result.out_grid.apply_to(jac_image)
    writers = {
        f"transform.{fmt}": lambda p: write_transform(result.displacement, p),
        "jacobian.nrrd": lambda p: write_image(jac_image, p),
    }
    if write_warped:
        writers["warped_moving.nrrd"] = lambda p: write_image(result.warped, p)
    if result.landmarks is not None:
        lmk = result.landmarks

        def write_tre(p):
            with open(p, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["label", "fixed_l", "fixed_p", "fixed_s", "moving_l", "moving_p", "moving_s",
                            "predicted_l", "predicted_p", "predicted_s", "tre_before_mm", "tre_network_mm",
                            "tre_after_mm"])
                for i, label in enumerate(labels):
                    w.writerow([label, *np.round(lmk["fixed_lps"][i], 4), *np.round(lmk["moving_lps"][i], 4),
                                *np.round(lmk["predicted_lps"][i], 4), round(float(lmk["before_mm"][i]), 4),
                                round(float(lmk["network_mm"][i]), 4), round(float(lmk["after_mm"][i]), 4)])

        writers["tre.csv"] = write_tre

    def overview(p):
        from .plots import overview_figure

        overview_figure(fixed_img, moving_img, result, p)

    if write_overview:
        writers["overview.png"] = overview
    summary_dict["files"] = sorted([*writers, "summary.json"])

    def write_summary(p):
        summary_dict["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        Path(p).write_text(json.dumps(summary_dict, indent=2), encoding="utf-8")

    writers["summary.json"] = write_summary
    write_all(Path(out), writers)
    return summary_dict
