"""Synthetic training pairs: the paper's construction, checked against scipy and gryds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import MODULE_DIR, SAMPLE

from ProgressiveRegistrationLib.core import fields
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.model.config import SplineConfig, SynthesisConfig
from ProgressiveRegistrationLib.training import synthesis


def _relation_residual(pair):
    """|fixed(x) - moving(x + u(x))| versus |fixed - moving|, inside the (eroded) mask."""
    warped = fields.warp(pair["moving"], pair["target"])
    m = pair["mask"] > 0.999
    m[:3], m[-3:], m[:, :3], m[:, -3:], m[..., :3], m[..., -3:] = False, False, False, False, False, False
    residual = (warped - pair["fixed"])[m].abs().mean()
    unregistered = (pair["moving"] - pair["fixed"])[m].abs().mean()
    return float(residual), float(unregistered)


def test_fixed_equals_moving_displaced_on_real_ct(chest_ct):
    cfg = SynthesisConfig(size=48)
    image = sitk.SmoothingRecursiveGaussian(sitk.ReadImage(str(chest_ct), sitk.sitkFloat32), 2.0)
    vol = synthesis.prepare_volume(image, cfg)
    pair = synthesis.make_pair(vol, cfg, synthesis.pair_generator(0, 0))
    residual, unregistered = _relation_residual(pair)
    # Interpolation (two linear resamplings against one) is the only difference; the CT is
    # smoothed by 2 mm so that it is small and the geometry is what is tested.
    assert residual < 0.1 * unregistered, (residual, unregistered)
    # The other conventions (sign or direction of u) are far off.
    wrong, _ = _relation_residual({**pair, "target": -pair["target"]})
    assert wrong > 5 * residual


def test_fixed_equals_moving_displaced_on_generated_volume():
    n = 48
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, n)] * 3, indexing="ij")
    hu = 800 * torch.sin(3 * x) * torch.cos(2 * y) * torch.sin(2.5 * z) - 200
    vol = synthesis.Volume(hu, torch.ones(n, n, n), Grid((n, n, n), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)), "generated")
    cfg = SynthesisConfig(size=n)
    pair = synthesis.make_pair(vol, cfg, synthesis.pair_generator(1, 0))
    residual, unregistered = _relation_residual(pair)
    assert residual < 0.05 * unregistered, (residual, unregistered)


def test_spline_matches_scipy_and_gryds_at_random_points():
    import scipy.ndimage as nd
    from gryds import BSplineTransformation

    rng = np.random.default_rng(0)
    n = 64
    for g in (2, 4, 8):
        values = rng.uniform(-3, 3, (3, g, g, g))  # (component x/y/z, gz, gy, gx)
        p = rng.uniform(0, n - 1, (200, 3))  # voxel (x, y, z)
        t = p * (g - 1) / (n - 1)
        wx, wy, wz = (synthesis.spline_weights(g, t[:, a]) for a in range(3))
        ours = np.einsum("pz,py,px,czyx->pc", wz, wy, wx, values)
        ref = np.stack([nd.map_coordinates(values[c], [t[:, 2], t[:, 1], t[:, 0]], order=3, mode="mirror")
                        for c in range(3)], 1)
        np.testing.assert_allclose(ours, ref, atol=1e-10)
        # gryds: points and displacements normalised by the control span (N-1 voxels); its
        # array axes are (z, y, x) here, as are ours.
        tr = BSplineTransformation(values[::-1] / (n - 1), order=3)
        pts = (p[:, ::-1] / (n - 1)).T
        moved = tr.transform(pts)
        gryds_u = ((moved - pts) * (n - 1)).T[:, ::-1]
        np.testing.assert_allclose(ours, gryds_u, atol=1e-4)
        # And the dense field on the grid agrees with the point evaluation.
        dense = synthesis.spline_field(torch.from_numpy(values), n).numpy()
        i = rng.integers(0, n, 3)
        ti = i * (g - 1) / (n - 1)
        w = [synthesis.spline_weights(g, np.array([v])) for v in ti]
        np.testing.assert_allclose(dense[:, i[2], i[1], i[0]],
                                   np.einsum("z,y,x,czyx->c", w[2][0], w[1][0], w[0][0], values), atol=1e-10)


def test_spline_interpolates_its_control_values():
    values = torch.rand((3, 4, 4, 4), dtype=torch.float64)
    dense = synthesis.spline_field(values, 31)  # control points at voxels 0, 10, 20, 30
    np.testing.assert_allclose(dense[:, ::10, ::10, ::10].numpy(), values.numpy(), atol=1e-12)


def test_table_i_ranges_spread_and_no_folding():
    n = 32
    cfg = SynthesisConfig(size=n)
    bound = np.array([sum(s.range_vox[a] for s in cfg.t2) for a in range(3)]) * n / 128
    extremes, dets, samples = [], [], []
    for seed in range(20):
        gen = synthesis.pair_generator(seed, 0)
        synthesis.random_transform(cfg.t1, n, gen)
        u = synthesis.random_transform(cfg.t2, n, gen)
        extremes.append(u.abs().amax(dim=(1, 2, 3)).numpy())
        dets.append(float(fields.jacobian_determinant(u.double()).min()))
        samples.append(u.reshape(3, -1)[:, ::7].numpy() * 128 / n)
    extremes = np.array(extremes).max(0)
    # Node-interpolating splines overshoot their control ranges (measured over 20 draws at 64³: up to ~27 % in x).
    assert np.all(extremes <= 1.35 * bound), (extremes, bound)
    assert np.all(extremes >= 0.5 * bound)
    assert extremes[2] > extremes[1] > extremes[0], "z (breathing) widest, then y, then x"
    assert min(dets) > 0, f"a T2 folded: min det {min(dets)}"
    # Spread (paper Fig. 4), in voxels of 128³: percentiles of |u| per axis.
    s = np.concatenate(samples, 1)
    p = np.percentile(np.abs(s), [50, 95], axis=1)
    print("median |u| x/y/z:", p[0].round(2), " 95th:", p[1].round(2))
    assert p[1][2] > p[1][1] > p[1][0]


def test_t1_moves_mask_and_both_images():
    n = 32
    cfg = SynthesisConfig(size=n, t2=[SplineConfig(4, (0.0, 0.0, 0.0))])
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    vol = synthesis.Volume(x * 10.0, torch.ones(n, n, n), Grid((n, n, n), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "")
    pair = synthesis.make_pair(vol, cfg, synthesis.pair_generator(0, 5))
    assert pair["target"].abs().max() == 0
    torch.testing.assert_close(pair["fixed"], pair["moving"])  # T2 = identity
    assert not torch.allclose(pair["moving"], vol.hu)  # T1 moved the image


def test_pairs_are_deterministic_with_workers():
    cfg = SynthesisConfig(size=16)
    ds = synthesis.SyntheticPairs([str(SAMPLE)], cfg, seed=3, length=4)
    direct = [ds[i]["target"] for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    for a, b in zip(direct, loader):
        torch.testing.assert_close(a, b["target"][0])
    again = synthesis.SyntheticPairs([str(SAMPLE)], cfg, seed=3, length=4)[2]["target"]
    torch.testing.assert_close(direct[2], again)
    other = synthesis.SyntheticPairs([str(SAMPLE)], cfg, seed=4, length=4)[2]["target"]
    assert not torch.allclose(direct[2], other)


def test_synth_cli_writes_a_consistent_pair(tmp_path):
    out = tmp_path / "pair"
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "synth", str(SAMPLE), "--out", str(out),
                        "--seed", "2", "--size", "32"], cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    names = {"fixed.nii.gz", "moving.nii.gz", "displacement.nii.gz", "mask.nii.gz", "fixed_gradient.nii.gz",
             "moving_gradient.nii.gz", "pair.json"}
    assert names <= {p.name for p in out.iterdir()}
    disp = sitk.ReadImage(str(out / "displacement.nii.gz"))
    assert disp.GetNumberOfComponentsPerPixel() == 3 and disp.GetSize() == (32, 32, 32)
    fixed = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "fixed.nii.gz"))))
    moving = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "moving.nii.gz"))))
    u = torch.from_numpy(sitk.GetArrayFromImage(disp)).movedim(-1, 0)
    mask = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz")))).float()
    residual, unregistered = _relation_residual({"fixed": fixed, "moving": moving, "target": u, "mask": mask})
    assert residual < 0.25 * unregistered
    assert json.loads((out / "pair.json").read_text(encoding="utf-8"))["seed"] == 2


@pytest.mark.parametrize("size", ["17", "0"])
def test_synth_rejects_bad_size(tmp_path, size):
    r = subprocess.run([sys.executable, "-m", "ProgressiveRegistrationLib", "synth", str(SAMPLE), "--out",
                        str(tmp_path / "o"), "--size", size], cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and not (tmp_path / "o").exists()


def test_nearly_aligned_pairs_shrink_t2_and_keep_the_relation():
    """synthesis.identity_fraction: those pairs' t2 is the same draw shrunk to at most
    ``identity_scale`` of itself; the others are the paper's pairs, bit for bit."""
    n = 32
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, n)] * 3, indexing="ij")
    hu = 800 * torch.sin(3 * x) * torch.cos(2 * y) * torch.sin(2.5 * z) - 200
    vol = synthesis.Volume(hu, torch.ones(n, n, n), Grid((n, n, n), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)), "generated")
    paper = synthesis.make_pair(vol, SynthesisConfig(size=n), synthesis.pair_generator(3, 0))
    still = synthesis.make_pair(vol, SynthesisConfig(size=n, identity_fraction=1.0, identity_scale=0.1),
                                synthesis.pair_generator(3, 0))
    factor = float((still["target"] * paper["target"]).sum() / (paper["target"] ** 2).sum())
    assert 0.0 <= factor <= 0.1
    torch.testing.assert_close(still["target"], factor * paper["target"], rtol=0, atol=1e-6)
    residual, unregistered = _relation_residual(still)
    assert residual <= unregistered + 1e-6
    # With both shares at 0 (the paper's pairs) no draw is added: t1, then t2, from the generator.
    gen = synthesis.pair_generator(3, 0)
    synthesis.random_transform(SynthesisConfig().t1, n, gen)
    torch.testing.assert_close(paper["target"], synthesis.random_transform(SynthesisConfig().t2, n, gen), rtol=0, atol=0)


def test_breathing_pairs_move_as_the_simulator_does():
    """synthesis.breathing_fraction: t2 is the breathing simulator's field on the crop (diaphragm
    amplitude drawn from breathing_si_mm): superior at the lung base by up to the amplitude, still
    at the apex, linear in the amplitude; fixed(x) = moving(x + u(x)) holds as for the splines."""
    cfg = SynthesisConfig(size=32, breathing_fraction=1.0, breathing_si_mm=(30.0, 30.0))
    vol = synthesis.prepare_volume(sitk.ReadImage(str(SAMPLE)), cfg)
    pair = synthesis.make_pair(vol, cfg, synthesis.pair_generator(5, 0))
    spacing = torch.tensor(vol.grid.spacing_mm).reshape(3, 1, 1, 1)
    u_mm = pair["target"] * spacing  # crop grids are axis-aligned LPS boxes: voxels x spacing is LPS mm
    si = u_mm[2]
    assert 0.5 * 30.0 < float(si.max()) <= 30.0 + 1e-3 and float(si.min()) >= -1e-3  # inhale -> exhale: superior
    lungs_z = torch.nonzero((vol.hu < -400).flatten(1).any(1)).flatten()
    top = int(lungs_z.max())  # the apex plane (LPS z grows superiorly on the crop grid)
    assert float(si[top:].abs().max()) < 0.05 * float(si.max())
    basis = synthesis.breathing_basis(vol)
    torch.testing.assert_close(pair["target"], 30.0 * basis[0] + 10.0 * basis[1])
    residual, unregistered = _relation_residual(pair)
    assert residual < 0.3 * unregistered, (residual, unregistered)
