"""Test-time refinement (refine.py): its loss against independent references, its effect on
a pair with a known smooth field, and the command line's options."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SAMPLE, assert_bad_input, progreg
from scipy import ndimage

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.itk_fields import displacement_image, field_transform
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
from ProgressiveRegistrationLib.core.transforms import displacement_lps, output_grid
from ProgressiveRegistrationLib.io.landmarks import write_markups_json
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration import refine as R
from ProgressiveRegistrationLib.registration import refine_config as RC
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.simulation.phantom import generate

#: Small levels for a small phantom (4 x 4 x 5 mm voxels).
SMALL = RC.RefineConfig(levels_mm=(8.0, 4.0), iterations=(60, 60))


# --- the loss ---------------------------------------------------------------------------------

def test_box_sum_is_a_zero_padded_box_filter():
    x = torch.rand(2, 9, 7, 11, dtype=torch.float64)
    for radius in (1, 2, 3):
        width = 2 * radius + 1
        ref = np.stack([ndimage.uniform_filter(c, width, mode="constant") * width**3 for c in x.numpy()])
        np.testing.assert_allclose(R.box_sum(x, radius).numpy(), ref, rtol=1e-10, atol=1e-10)


def _ncc2_by_autograd(fixed, warped, weight, radius, eps):
    """The same loss written plainly and differentiated by autograd: the reference."""
    def box(t):
        return R.box_sum(t[None], radius)[0]
    n = box(torch.ones_like(fixed))
    s_f, s_w, s_ff, s_ww, s_fw = box(fixed), box(warped), box(fixed * fixed), box(warped * warped), box(fixed * warped)
    a = s_fw - s_f * s_w / n
    b = s_ff - s_f * s_f / n
    c = s_ww - s_w * s_w / n
    informative = b > eps * n
    ncc2 = a * a / torch.where(informative, b, 1.0) / torch.maximum(c, eps * n)
    return (ncc2 * weight * informative).sum()


def test_closed_form_gradient_equals_autograd():
    torch.manual_seed(0)
    fixed = torch.rand(8, 7, 9, dtype=torch.float64)
    warped = (0.6 * fixed + 0.4 * torch.rand(8, 7, 9, dtype=torch.float64)).requires_grad_(True)
    weight = torch.rand(8, 7, 9, dtype=torch.float64)
    flat = torch.zeros_like(fixed, dtype=torch.bool)
    flat[:, :, :3] = True  # flat fixed windows (no weight), and flat warped ones (the floor)
    fixed = torch.where(flat, 0.25, fixed)
    warped = torch.where(flat.flip(2), 0.5, warped.detach()).requires_grad_(True)
    ours = R.local_ncc2(fixed, warped, weight, 1, 1e-4)
    (g_ours,) = torch.autograd.grad(ours, warped)
    ref = _ncc2_by_autograd(fixed, warped, weight, 1, 1e-4)
    (g_ref,) = torch.autograd.grad(ref, warped)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    assert torch.autograd.gradcheck(lambda w: R.local_ncc2(fixed, w, weight, 1, 1e-4), (warped,))


def test_ncc_is_one_for_a_linear_change_of_intensity_and_finite_on_flat_images():
    torch.manual_seed(1)
    f = torch.rand(10, 10, 10, dtype=torch.float64)
    w = torch.full_like(f, 1.0 / f.numel())
    assert float(R.local_ncc2(f, 0.3 + 0.8 * f, w, 2, 1e-7)) == pytest.approx(1.0, abs=1e-6)
    flat = torch.full_like(f, 0.5)
    for fixed, warped in ((flat, flat), (f, flat), (flat, f)):
        value = R.local_ncc2(fixed, warped, w, 2, 1e-7)
        assert torch.isfinite(value) and float(value) == 0.0


def test_diffusion_of_a_linear_field_is_its_squared_gradient():
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (5, 6, 7)), indexing="ij")
    spacing = (2.0, 3.0, 4.0)  # (x, y, z) mm
    v = torch.stack([0.1 * x * spacing[0], torch.zeros_like(x), 0.2 * z * spacing[2]], -1)  # mm
    # mean over the 3 axes' differences ×3: (0.1² + 0.2²), each nonzero along its own axis
    assert float(R.diffusion(v, spacing)) == pytest.approx(0.1**2 + 0.2**2)


def test_across_the_lung_surface_only_the_slide_is_relaxed():
    """A vertical surface (lungs for x ≥ 3): a field jumping along S across it (the lungs
    sliding along the chest wall) costs the sliding weight times the isotropic term; a jump
    along L (a gap opening, or an overlap) costs as much as anywhere."""
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (5, 6, 7)), indexing="ij")
    lungs = (x >= 3).numpy()
    edges = torch.from_numpy(R.surface_edges(lungs)).bool()
    assert edges[2].sum() == 5 * 6 and not edges[0].any() and not edges[1].any()
    grid = Grid((7, 6, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    across = torch.from_numpy(R.across_weights(grid, 0.1)).double()
    np.testing.assert_allclose(across.numpy(), [[0.1, 0.1, 1.0], [0.1, 1.0, 0.1], [1.0, 0.1, 0.1]], rtol=1e-6)
    jump = (x >= 3).double()
    slide = torch.stack([torch.zeros_like(x), torch.zeros_like(x), jump], -1)
    gap = torch.stack([jump, torch.zeros_like(x), torch.zeros_like(x)], -1)
    spacing = (1.0, 1.0, 1.0)
    assert float(R.diffusion(slide, spacing, edges, across)) == pytest.approx(0.1 * float(R.diffusion(slide, spacing)))
    assert float(R.diffusion(gap, spacing, edges, across)) == pytest.approx(float(R.diffusion(gap, spacing)))
    # A grid stored along other axes: the weights follow each index axis's LPS direction.
    permuted = Grid((5, 6, 7), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0, 0, 1, 0, 1, 0, 1, 0, 0))
    np.testing.assert_allclose(R.across_weights(permuted, 0.1), [[0.1, 0.1, 1.0], [0.1, 1.0, 0.1], [1.0, 0.1, 0.1]][::-1],
                               rtol=1e-6)


# --- refinement on a pair with a known field --------------------------------------------------

def _bump_lps(points_lps: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A smooth, fold-free field (LPS mm): 8 mm along S (the breathing axis) and 3 mm along P
    at ``centre``, Gaussian with σ = 80 mm."""
    r2 = ((points_lps - centre) ** 2).sum(-1, keepdims=True)
    return np.exp(-r2 / (2 * 80.0**2)) * np.array([0.0, 3.0, 8.0])


@pytest.fixture(scope="module")
def known_pair():
    """A phantom (fixed) and moving(y) = fixed(y + w(y)), w the smooth bump: a moving point y
    corresponds to the fixed point y + w(y) exactly."""
    ph = generate(3, (80, 64, 48), (4.0, 4.0, 5.0))
    fixed = ph.image
    grid = Grid.from_image(fixed)
    centre = grid.points_to_lps(np.array([[(n - 1) / 2 for n in grid.size]]))[0]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).reshape(-1, 3)
    w = _bump_lps(grid.points_to_lps(ijk), centre).reshape(*grid.size, 3).transpose(2, 1, 0, 3)
    moving = sitk.Resample(fixed, fixed, field_transform(displacement_image(w, grid)), sitk.sitkLinear, -1000.0)
    rng = np.random.default_rng(0)
    lungs = sitk.GetArrayFromImage(thorax_masks(fixed).lungs)
    inside = ph.bifurcations_lps[rng.choice(len(ph.bifurcations_lps), 40, replace=False)]
    moving_pts = inside
    fixed_pts = moving_pts + _bump_lps(moving_pts, centre)
    assert lungs.any()
    return fixed, moving, fixed_pts, moving_pts


def test_refinement_recovers_a_known_field_the_network_misses(known_pair, tiny_model):
    fixed, moving, fixed_pts, moving_pts = known_pair
    model = load_model(tiny_model)
    r = register_images(fixed, moving, model, fixed_points_lps=fixed_pts, moving_points_lps=moving_pts,
                        warp_moving=False, refinement=SMALL)
    before, network, after = (r.landmarks[k].mean() for k in ("before_mm", "network_mm", "after_mm"))
    assert before > 4.0 and network > 2.5, (before, network)  # the (untrained) network alone misses
    assert after < 1.0, (before, network, after)
    assert r.folding_percent < 0.1
    assert float(r.jacobian[r.body_mask].min()) > 0.0
    assert [lv["iterations"] for lv in r.refinement] == [60, 60]
    assert all(lv["ncc2_after"] > lv["ncc2_before"] for lv in r.refinement)


def test_refinement_is_deterministic(known_pair):
    fixed, moving, _, _ = known_pair
    masks = thorax_masks(fixed)
    args = (Grid.from_image(fixed), lambda g: np.zeros((*g.shape_zyx, 3), np.float32), lambda g: mask_on(masks.body, g),
            SMALL)
    one, two = R.refine(fixed, moving, *args), R.refine(fixed, moving, *args)
    assert float(one.v_mm.abs().max()) > 1.0
    assert torch.equal(one.v_mm, two.v_mm)


def test_identical_images_stay_identical(known_pair):
    """A CT registered to itself from the identity: the gradient is exactly zero there (the
    loss's closed form is arranged so that rounding cannot leave a residue), so nothing moves."""
    for ct in (sitk.ReadImage(str(SAMPLE)), known_pair[0]):
        masks = thorax_masks(ct)
        r = R.refine(ct, ct, Grid.from_image(ct), lambda g: np.zeros((*g.shape_zyx, 3), np.float32),
                     lambda g, masks=masks: mask_on(masks.body, g))
        assert float(r.v_mm.abs().max()) == 0.0, r.levels
        assert all(lv.get("ncc2_after", 1.0) == pytest.approx(1.0) for lv in r.levels)


def test_the_coarse_levels_take_the_coarse_smoothness(known_pair):
    """λ is ``coarse_smoothness`` before the last level and ``smoothness`` at it: with one level
    the coarse value plays no part, with two it changes the result."""
    fixed, moving, _, _ = known_pair
    masks = thorax_masks(fixed)
    args = (Grid.from_image(fixed), lambda g: np.zeros((*g.shape_zyx, 3), np.float32), lambda g: mask_on(masks.body, g))

    def run(levels, coarse):
        return R.refine(fixed, moving, *args, RC.RefineConfig(levels_mm=levels, iterations=(20,) * len(levels),
                                                              coarse_smoothness=coarse))

    assert torch.equal(run((8.0,), 0.0).v_mm, run((8.0,), 1.0).v_mm)
    stiff, loose = run((8.0, 4.0), 1.0), run((8.0, 4.0), 0.05)
    assert [lv["smoothness"] for lv in loose.levels] == [0.05, 1.0]
    assert [lv["smoothness"] for lv in stiff.levels] == [1.0, 1.0]
    assert stiff.levels[0]["diffusion"] < loose.levels[0]["diffusion"]  # less λ, a rougher field
    assert not torch.equal(stiff.v_mm, loose.v_mm)


def test_where_the_last_level_is_skipped_the_level_before_takes_the_final_smoothness():
    """5-mm voxels: the 4-mm and the 2-mm level both run on the voxels themselves, so the 2-mm
    level is skipped, and the 4-mm level, the last that runs, must not keep the coarse λ."""
    image = generate(7, (40, 36, 16), (5.0, 5.0, 5.0)).image
    masks = thorax_masks(image)
    out = R.refine(image, image, Grid.from_image(image), lambda g: np.zeros((*g.shape_zyx, 3), np.float32),
                   lambda g: mask_on(masks.body, g),
                   RC.RefineConfig(levels_mm=(16.0, 8.0, 4.0, 2.0), iterations=(1, 1, 1, 1), coarse_smoothness=0.3))
    assert [lv.get("smoothness") for lv in out.levels] == [0.3, 0.3, 1.0, None]
    assert "skipped" in out.levels[-1]


def test_smoothness_must_not_be_negative():
    for bad in ({"smoothness": -1.0}, {"coarse_smoothness": -0.1}, {"coarse_smoothness": float("nan")}):
        with pytest.raises(InputError):
            RC.RefineConfig(**bad)


def test_progress_reports_every_level(known_pair):
    fixed, moving, _, _ = known_pair
    masks = thorax_masks(fixed)
    messages = []
    R.refine(fixed, moving, Grid.from_image(fixed), lambda g: np.zeros((*g.shape_zyx, 3), np.float32),
             lambda g: mask_on(masks.body, g), SMALL, lambda f, m: messages.append((f, m)))
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("level 1/2" in m for _, m in messages) and any("level 2/2" in m and "60/60" in m for _, m in messages)


def test_option_parsing():
    assert RC.parse_levels("8, 4,2") == (8.0, 4.0, 2.0)
    assert RC.parse_iterations("50", 3) == (50, 50, 50)
    assert RC.config_from_options("4,2", None).iterations == (RC.ITERATIONS_PER_LEVEL,) * 2
    assert RC.config_from_options(None, "10") == RC.RefineConfig(iterations=(10,) * len(RC.DEFAULT.levels_mm))
    for bad in ("", "4,x", "-2", "0", "nan"):
        with pytest.raises(InputError):
            RC.parse_levels(bad)
    for bad, n in (("-1", 2), ("1,2,3", 2), ("1.5", 1)):
        with pytest.raises(InputError):
            RC.parse_iterations(bad, n)


# --- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(known_pair, tmp_path_factory):
    fixed, moving, fixed_pts, moving_pts = known_pair
    d = tmp_path_factory.mktemp("known")
    sitk.WriteImage(fixed, str(d / "fixed.nrrd"))
    sitk.WriteImage(moving, str(d / "moving.nrrd"))
    write_markups_json(d / "fixed.mrk.json", fixed_pts)
    write_markups_json(d / "moving.mrk.json", moving_pts)
    return d


def _register(d, out, *extra):
    return progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", out, "--fixed-landmarks",
                   d / "fixed.mrk.json", "--moving-landmarks", d / "moving.mrk.json", "--json", *map(str, extra))


def test_no_refine_is_the_network_field_exactly(files, tmp_path, tiny_model):
    r = _register(files, tmp_path / "o", "--model", tiny_model, "--no-refine")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["refinement"] is None and "refine" not in summary["seconds"]
    assert summary["tre_network_mm"] == summary["tre_after_mm"]
    # The one-pass result: the network's u mapped onto the grid of the network alone.
    fixed, moving = sitk.ReadImage(str(files / "fixed.nrrd")), sitk.ReadImage(str(files / "moving.nrrd"))
    res = register_images(fixed, moving, load_model(tiny_model), warp_moving=False)
    expected = displacement_lps(res.u_vox, res.fixed_crop, res.moving_crop, output_grid(res.fixed_grid, res.fixed_crop))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "transform.nrrd")))
    assert written.shape == expected.shape and np.array_equal(written, expected)


def test_refined_run_reports_network_and_refined_tre(files, tmp_path, tiny_model):
    out = tmp_path / "o"
    r = _register(files, out, "--model", tiny_model, "--refine-levels", "8,4", "--refine-iterations", "60")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["tre_after_mm"]["mean"] < 0.5 * s["tre_network_mm"]["mean"]
    assert [lv["spacing_mm"][0] for lv in s["refinement"]["levels"]] == [8.0, 4.0]
    assert s["seconds"]["refine"] > 0
    with open(out / "tre.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert np.mean([float(row["tre_network_mm"]) for row in rows]) == pytest.approx(s["tre_network_mm"]["mean"], abs=1e-3)
    assert np.mean([float(row["tre_after_mm"]) for row in rows]) == pytest.approx(s["tre_after_mm"]["mean"], abs=1e-3)
    assert [row["worse_after_refinement"] == "1" for row in rows] == [
        float(row["tre_after_mm"]) - float(row["tre_network_mm"]) > 0.5 for row in rows]
    # The network-only TRE of a refined run is the one-pass run's (the field is the same,
    # only sampled on a finer grid).
    one = json.loads(_register(files, tmp_path / "one", "--model", tiny_model, "--no-refine").stdout)
    assert s["tre_network_mm"]["mean"] == pytest.approx(one["tre_after_mm"]["mean"], abs=0.05)


@pytest.mark.parametrize("extra", [
    ["--refine-iterations=-5"],
    ["--refine-iterations", "ten"],
    ["--refine-levels", "4,two"],
    ["--refine-levels=-4,2"],
    ["--refine-levels", "4,2", "--refine-iterations", "1,2,3"],
    ["--no-refine", "--refine-levels", "4"],
])
def test_bad_refine_options(files, tmp_path, tiny_model, extra):
    out = tmp_path / "o"
    r = progreg("register", files / "fixed.nrrd", files / "moving.nrrd", "--out", out, "--model", tiny_model, *extra)
    assert_bad_input(r, out)


def test_demo_accepts_the_refine_options(tmp_path):
    out = tmp_path / "demo"
    assert_bad_input(progreg("demo", "--out", out, "--refine-iterations=-1"), out)


def test_command_line_defaults_are_the_code_defaults():
    from ProgressiveRegistrationLib.cli import build_parser
    from ProgressiveRegistrationLib.cli.common import refinement

    for command in (["register", "f.nrrd", "m.nrrd", "--out", "o"], ["demo"], ["dirlab", "d"]):
        args = build_parser().parse_args(command)
        assert refinement(args) == RC.RefineConfig(), command
        args = build_parser().parse_args([*command, "--no-refine"])
        assert refinement(args) is None
    args = build_parser().parse_args(["demo", "--refine-levels", "6,3", "--refine-iterations", "10"])
    assert refinement(args) == RC.RefineConfig(levels_mm=(6.0, 3.0), iterations=(10, 10))


def test_adam_equals_torch_optim_adam():
    torch.manual_seed(0)
    target = torch.randn(4, 5, 3)
    ours, ref = torch.zeros(4, 5, 3, requires_grad=True), torch.zeros(4, 5, 3, requires_grad=True)
    adam, reference = R.Adam(ours, 0.1, 1e-2), torch.optim.Adam([ref], lr=0.1, eps=1e-2)
    for _ in range(25):
        for p in (ours, ref):
            p.grad = None
            ((p - target) ** 4).sum().backward()
        adam.step()
        reference.step()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# --- the level spacing rule ---------------------------------------------------------------------

def _image(spacing_mm, size=(200, 200, 200)) -> sitk.Image:
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing_mm)
    return img


def test_a_level_is_no_finer_than_its_spacing_within_the_tolerance():
    """The nearest whole factor, raised to the smallest f with f·s ≥ 0.8·spacing, per axis."""
    expected = {  # voxel mm -> factors at the 8, 4, 2 mm levels
        0.977: (8, 4, 2),  # 7.82, 3.91, 1.95 mm
        1.37: (6, 3, 2),  # 8.22, 4.11, 2.74 mm (the nearest factor alone gives 1.37 mm at 2 mm)
        1.6: (5, 2, 1),  # 8, 3.2, 1.6 mm (1.6 is within 20 % of 2: kept)
        2.5: (3, 2, 1),  # 7.5, 5, 2.5 mm
        2.732: (3, 2, 1),  # 8.2, 5.46 (the nearest factor alone gives 2.73 mm at 4 mm), 2.73 mm
        5.0: (2, 1, 1),  # 10, 5, 5 mm
    }
    assert R.SPACING_TOLERANCE == 0.2
    for s, factors in expected.items():
        got = tuple(R.shrink_factors(_image((s, 0.977, 5.0)), level)[0] for level in (8.0, 4.0, 2.0))
        assert got == factors, (s, got)
    # Per axis, on an anisotropic grid: 0.977 × 1.37 × 2.5 mm at the 2 mm level.
    assert R.shrink_factors(_image((0.977, 1.37, 2.5)), 2.0) == (2, 2, 1)
    for s in (0.5, 0.7, 0.977, 1.25, 1.37, 1.6, 2.5, 3.0, 5.0):
        for level in (8.0, 4.0, 2.0):
            f = R.shrink_factors(_image((s, s, s)), level)[0]
            assert f * s >= 0.8 * level - 1e-9  # never finer than the tolerance allows
            assert f == 1 or f <= max(round(level / s), int(np.ceil(0.8 * level / s)))  # and no coarser than needed
    # A voxel size that divides the floor exactly keeps that factor: 0.8 mm voxels, floor 1.6 mm.
    assert R.shrink_factors(_image((0.8, 0.8, 0.8)), 2.0) == (2, 2, 2)
    # At least two cells remain along every axis.
    assert R.shrink_factors(_image((0.977, 0.977, 2.5), size=(200, 9, 5)), 8.0) == (8, 4, 2)
    # The finest level: the nearest factor, lowered so that no axis is coarser than 1.2 × the
    # level's spacing (the accuracy is set there).
    finest = {0.5: 4, 0.7: 3, 0.8: 2, 0.977: 2, 1.25: 1, 1.37: 1, 1.6: 1, 2.5: 1, 5.0: 1}
    for s, f in finest.items():
        assert R.shrink_factors(_image((s, s, s)), 2.0, finest=True)[0] == f, s
        assert f == 1 or f * s <= 1.2 * 2.0 + 1e-9
    assert R.shrink_factors(_image((1.37, 1.37, 2.5)), 2.0, finest=True) == (1, 1, 1)


def test_the_refinement_uses_the_finest_rule_at_its_last_level_only():
    image = generate(7, (40, 36, 16), (1.37, 1.37, 2.5)).image
    masks = thorax_masks(image)
    out = R.refine(image, image, Grid.from_image(image), lambda g: np.zeros((*g.shape_zyx, 3), np.float32),
                   lambda g: mask_on(masks.body, g), RC.RefineConfig(levels_mm=(2.0, 2.0), iterations=(1, 1)))
    first, last = out.levels
    assert first["spacing_mm"][:2] == [2.74, 2.74]  # a coarser level: no finer than 0.8 × 2 mm
    assert last["spacing_mm"][:2] == [1.37, 1.37] and last["iterations"] == 1  # the last: no coarser than 1.2 × 2 mm
    assert out.grid.spacing_mm[:2] == (1.37, 1.37)
