"""The refinement's compiled iteration (fused.py) against the device-generic torch path of
refine.py: the warp and its gradient against ``grid_sample`` and autograd, the loss and its
gradient, the field after some iterations, on anisotropic and rotated grids; and the same
bits for every thread count."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
from ProgressiveRegistrationLib.registration import fused
from ProgressiveRegistrationLib.registration import refine as R
from ProgressiveRegistrationLib.simulation.phantom import generate

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed: the torch path is the only one")


def _rotated(image: sitk.Image, degrees: float) -> sitk.Image:
    """``image`` resampled onto a grid rotated about S by ``degrees`` (world positions kept)."""
    a = np.deg2rad(degrees)
    direction = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    ref = sitk.Image(image.GetSize(), image.GetPixelID())
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(direction.ravel().tolist())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    half = direction @ ((np.asarray(image.GetSize()) - 1) / 2 * np.asarray(image.GetSpacing()))
    ref.SetOrigin((centre - half).tolist())
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1000.0)


@pytest.fixture(scope="module")
def small_pairs():
    """(name, fixed, moving) small phantom pairs: an anisotropic grid (3 × 3.5 × 5 mm), and
    the same with a moving image stored along rotated axes (its index map is a full 3×3)."""
    ph = generate(5, (48, 40, 30), (3.0, 3.5, 5.0))
    fixed = ph.image
    shifted = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, (1.5, -2.0, 3.0)), sitk.sitkLinear, -1000.0)
    return [("anisotropic", fixed, shifted), ("rotated", fixed, _rotated(shifted, 20.0))]


def _problem(fixed):
    """(crop, network_disp, body_mask) for :func:`R.refine`: the whole fixed image as the
    crop, and a smooth stand-in for the network's field (≤ 1.2 mm)."""
    masks = thorax_masks(fixed)

    def network_disp(g: Grid) -> np.ndarray:
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in g.size], indexing="ij"), -1).reshape(-1, 3)
        lps = g.points_to_lps(ijk).reshape(*g.size, 3).transpose(2, 1, 0, 3)
        # Offset, so that no point starts exactly on a cell face (where the trilinear
        # gradient jumps, and two samplers may pick either side).
        return (0.37 + 0.8 * np.sin(lps / 40.0 + 0.3)).astype(np.float32)

    return Grid.from_image(fixed), network_disp, lambda g: mask_on(masks.body, g)


def _compiled(lv: R._Level, v: torch.Tensor, config: R.RefineConfig, threads: int = 2,
              restrict: bool = True) -> fused.FusedAdam:
    return fused.FusedAdam(lv.fixed.numpy(), lv.moving.numpy(), lv.lps_to_moving_vox @ lv.grid.index_to_lps,
                           lv.lps_to_moving_vox[:, :3],
                           fused.window_statistics(lv.fixed.numpy(), lv.weight.numpy(), config.radius_vox),
                           (lv.d_net + v).permute(3, 0, 1, 2).numpy(), lv.grid.spacing_mm, radius=config.radius_vox,
                           eps_variance=config.eps, scale=float(v[..., 0].numel()), smoothness=config.smoothness,
                           lr=config.learning_rate_mm, eps=config.gradient_floor, threads=threads,
                           restrict=restrict, edges=lv.edges, across=lv.across)


def test_the_warp_and_its_gradient_equal_grid_sample_and_autograd():
    torch.manual_seed(0)
    moving = torch.rand(9, 11, 13)
    shape = (5, 6, 7)
    # Positions inside, on the voxel centres' hull and beyond it (clamped: border padding):
    # q = (i, j, k) + u with the identity as both maps.
    q = torch.rand(*shape, 3) * torch.tensor([15.0, 13.0, 11.0]) - 1.0
    q[0, 0, 0] = torch.tensor([12.0, 10.0, 8.0])
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")[::-1], -1)
    windows = np.ones((4, *shape), np.float32)
    opt = fused.FusedAdam(np.zeros(shape, np.float32), moving.numpy(), np.eye(3, 4), np.eye(3), windows,
                          (q - ijk).permute(3, 0, 1, 2).numpy(), (1.0, 1.0, 1.0), radius=1, eps_variance=1e-7,
                          scale=1.0, smoothness=1.0, lr=0.1, eps=1e-2)
    opt.similarity()
    q_ref = q.clone().requires_grad_(True)
    ref = R._grid_sample(moving, q_ref, slabs=2)
    torch.testing.assert_close(torch.from_numpy(opt.warped), ref.detach(), atol=1e-5, rtol=1e-5)
    weights = torch.rand_like(ref)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), q_ref)
    torch.testing.assert_close(torch.from_numpy(opt.dj_du).permute(1, 2, 3, 0) * weights[..., None], g_ref, atol=1e-4, rtol=1e-4)


def test_the_box_sums_equal_the_torch_box_filter():
    torch.manual_seed(1)
    x = torch.rand(3, 9, 2)  # (C, H, W): 2 columns, fewer than the window along i
    for r in (1, 2, 3):
        rows, both = np.empty_like(x.numpy()), np.empty_like(x.numpy())
        for c in range(3):
            fused._box_slice(x[c].numpy(), rows[c], both[c], r)
        # refine.box_sum filters dims 1..3 of (C, D, H, W); with D = 1 it is the in-slice filter.
        torch.testing.assert_close(torch.from_numpy(both), R.box_sum(x[:, None], r)[:, 0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(both), _box_ij(x, r), rtol=1e-6, atol=1e-6)


def _box_ij(x: torch.Tensor, r: int) -> torch.Tensor:
    """Box sums of ``(C, H, W)`` along H and W only (zero outside), by a loop over offsets."""
    c, h, w = x.shape
    padded = torch.zeros(c, h + 2 * r, w + 2 * r)
    padded[:, r:r + h, r:r + w] = x
    return sum(padded[:, r + a:r + a + h, r + b:r + b + w] for a in range(-r, r + 1) for b in range(-r, r + 1))


def _levels(small_pairs, spacing_mm: float, config: R.RefineConfig):
    for name, fixed, moving in small_pairs:
        crop, network_disp, body_mask = _problem(fixed)
        lungs = thorax_masks(fixed).lungs
        lo, hi = crop.bounding_box_lps()
        yield name, R._level(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32), lo, hi,
                             spacing_mm, config, network_disp, body_mask, torch.device("cpu"),
                             lungs=lambda g, lungs=lungs: mask_on(lungs, g))


@pytest.mark.parametrize("sliding_weight", [1.0, 0.1])
def test_loss_and_gradient_equal_the_torch_path(small_pairs, sliding_weight):
    """Isotropic, and with the lungs sliding along their surface (the diffusion's weight
    across it below 1): the compiled passes' loss and gradient are autograd's."""
    config = R.RefineConfig(levels_mm=(6.0,), iterations=(1,), sliding_weight=sliding_weight)
    for name, lv in _levels(small_pairs, 6.0, config):
        assert (lv.edges is not None) == (sliding_weight != 1.0)
        if lv.edges is not None:
            assert lv.edges.any()
        assert (lv.mm_to_vox.dim() == 2) == (name == "rotated")
        v = (torch.rand((*lv.grid.shape_zyx, 3), generator=torch.Generator().manual_seed(0)) - 0.5) * 4.0
        p = v.clone().requires_grad_(True)
        similarity, smooth = R._objective(lv, p, config, slabs=2)
        scale = float(v[..., 0].numel())
        (scale * (config.smoothness * smooth - similarity)).backward()
        opt = _compiled(lv, v, config)
        s_compiled = opt.step()
        # After Adam's first step from zero moments, the first moment is (1 − β₁)·gradient.
        g_compiled = torch.from_numpy(opt.m1).permute(1, 2, 3, 0) / (1.0 - opt.betas[0])
        similarity = similarity.item()
        assert 0.05 < similarity < 1.0, name
        assert s_compiled == pytest.approx(similarity, rel=1e-5, abs=1e-7), name
        assert float(p.grad.abs().max()) > 0.0
        torch.testing.assert_close(g_compiled, p.grad, rtol=1e-3, atol=1e-4 * float(p.grad.abs().max()))


def test_every_thread_count_gives_the_same_bits(small_pairs):
    config = R.RefineConfig(levels_mm=(6.0,), iterations=(5,))
    name, lv = next(_levels(small_pairs[1:], 6.0, config))
    v = torch.zeros((*lv.grid.shape_zyx, 3))
    runs = []
    for threads in (1, 2):
        opt = _compiled(lv, v, config, threads)
        losses = [opt.step() for _ in range(5)]
        runs.append((losses, opt.u.copy()))
    assert runs[0][0] == runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])
    assert np.abs(runs[0][1] - (lv.d_net + v).permute(3, 0, 1, 2).numpy()).max() > 0.1  # it moved


def test_the_diffusion_record_equals_the_torch_expression():
    v = torch.randn(7, 9, 11, 3, generator=torch.Generator().manual_seed(3))
    spacing = (0.8, 1.3, 2.5)
    expected = float(R.diffusion(v, spacing))
    assert fused.diffusion(v.permute(3, 0, 1, 2).numpy(), spacing, threads=2) == pytest.approx(expected, rel=1e-6)
    lungs = torch.rand(7, 9, 11, generator=torch.Generator().manual_seed(4)).numpy() > 0.5
    edges = R.surface_edges(lungs)
    across = R.across_weights(Grid((11, 9, 7), spacing, (0.0, 0.0, 0.0)), 0.2)
    expected = float(R.diffusion(v, spacing, torch.from_numpy(edges).bool(), torch.from_numpy(across)))
    assert expected < float(R.diffusion(v, spacing))
    got = fused.diffusion(v.permute(3, 0, 1, 2).numpy(), spacing, threads=2, edges=edges, across=across)
    assert got == pytest.approx(expected, rel=1e-6)


def test_working_within_the_weighted_rows_gives_the_same_bits(small_pairs):
    """The passes skip the parts of rows that no weighted window reads (air around the
    body): the losses and the field after some steps equal computing everywhere, bit for bit."""
    config = R.RefineConfig(levels_mm=(4.0,), iterations=(6,))
    for name, lv in _levels(small_pairs, 4.0, config):
        v = (torch.rand((*lv.grid.shape_zyx, 3), generator=torch.Generator().manual_seed(1)) - 0.5) * 2.0
        runs = []
        for restrict in (True, False):
            opt = _compiled(lv, v, config, restrict=restrict)
            runs.append(([opt.step() for _ in range(6)], opt.u.copy(), opt.extents))
        (restricted, u_r, extents), (everywhere, u_e, whole) = runs
        assert restricted == everywhere and np.array_equal(u_r, u_e), name
        n_i = lv.grid.size[0]
        assert np.all(whole[:, 0] == 0) and np.all(whole[:, 1] == n_i)
        covered = (extents[1, 1] - extents[1, 0]).sum() / (n_i * extents.shape[2] * extents.shape[3])
        assert 0.3 < covered < 0.95, (name, covered)  # something is left out, the body is not
        # Each row's extent holds all its weight, and reaches r voxels beyond it.
        weight = lv.weight.numpy()
        for k, j in ((lv.grid.size[2] // 2, lv.grid.size[1] // 2), (0, 0)):
            nonzero = np.flatnonzero(weight[k, j])
            lo, hi = extents[0, :, k, j]
            if nonzero.size:
                assert (lo, hi) == (nonzero[0], nonzero[-1] + 1)
                assert extents[1, 0, k, j] <= max(lo - config.radius_vox, 0)
                assert extents[1, 1, k, j] >= min(hi + config.radius_vox, n_i)
            else:
                assert lo == hi == 0


@pytest.mark.parametrize("coarse_smoothness", [1.0, 0.3])
def test_the_refinement_equals_the_torch_path_after_some_iterations(small_pairs, monkeypatch, coarse_smoothness):
    config = R.RefineConfig(levels_mm=(8.0, 5.0), iterations=(8, 8), coarse_smoothness=coarse_smoothness)
    # A less smooth first level lets Adam carry the two paths' rounding further apart.
    bound = {1.0: (2e-4, 1e-2), 0.3: (4e-4, 5e-2)}[coarse_smoothness]
    calls = []
    original = R._grid_sample
    monkeypatch.setattr(R, "_grid_sample", lambda *a: calls.append(1) or original(*a))
    for name, fixed, moving in small_pairs:
        args = (fixed, moving, *_problem(fixed), config)
        compiled = R.refine(*args, device="cpu")
        assert not calls  # the compiled path samples on its own
        monkeypatch.setattr(R.fused, "available", lambda: False)
        generic = R.refine(*args, device="cpu")
        monkeypatch.undo()
        monkeypatch.setattr(R, "_grid_sample", lambda *a: calls.append(1) or original(*a))
        assert calls
        calls.clear()
        assert compiled.v_mm.device.type == "cpu" and compiled.grid == generic.grid
        assert float(compiled.v_mm.abs().max()) > 0.5, name  # the field moved
        # Float rounding of the two paths, carried through 16 Adam steps. Adam normalises each
        # node's step, so a rare node whose gradient is near zero can take a different step
        # from a rounding difference; the bound is on all but 0.1 %.
        diff = (generic.v_mm - compiled.v_mm).abs().reshape(-1)
        assert float(diff.mean()) < bound[0] and float(torch.quantile(diff, 0.999)) < bound[1], (name, float(diff.mean()))
        for a, b in zip(compiled.levels, generic.levels):
            assert a["smoothness"] == b["smoothness"]
            assert a["diffusion"] == pytest.approx(b["diffusion"], rel=1e-2)
            assert a["ncc2_before"] == pytest.approx(b["ncc2_before"], abs=2e-4)
            assert a["ncc2_after"] == pytest.approx(b["ncc2_after"], abs=2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_refinement_on_cuda_equals_the_cpu(small_pairs):
    config = R.RefineConfig(levels_mm=(8.0, 5.0), iterations=(8, 8))
    for name, fixed, moving in small_pairs:
        args = (fixed, moving, *_problem(fixed), config)
        cpu, gpu = R.refine(*args, device="cpu"), R.refine(*args, device="cuda")
        assert gpu.v_mm.device.type == "cpu" and gpu.grid == cpu.grid, name
        torch.testing.assert_close(gpu.v_mm, cpu.v_mm, rtol=0, atol=5e-3)
