"""Figures: the overview's slices are the slices of a full resample; folds are marked where they are."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import SAMPLE


def test_overview_slice_equals_the_slice_of_a_full_resample():
    """The overview figure resamples only the slice it shows; it must be that slice of the
    whole-volume resample (rotated, anisotropic target grid)."""
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.registration.figures import _coronal_on

    image = sitk.ReadImage(str(SAMPLE))
    c, s = np.cos(0.3), np.sin(0.3)
    grid = Grid((40, 30, 20), (3.0, 2.5, 4.0), tuple(np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [10.0, 12.0, 3.0]))), (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    full = sitk.GetArrayFromImage(sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear,
                                                -1024.0, sitk.sitkFloat32))
    for j in (0, 17, 29):
        np.testing.assert_allclose(_coronal_on(image, grid, j), full[:, j, :], atol=1e-3)


def _red(png: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    rgb = imread(io.BytesIO(png))[..., :3]
    return (rgb[..., 0] > 0.85) & (rgb[..., 1] < 0.25) & (rgb[..., 2] < 0.25)


def test_folding_voxels_are_marked_where_they_are(tiny_model):
    """A fold planted at the centre of the lungs (where the review's three planes cross) is
    drawn in red on the review's det J column; the folds' own figure marks it too; a field
    without folds has no red there."""
    import dataclasses

    from ProgressiveRegistrationLib.model.modelfile import load_model
    from ProgressiveRegistrationLib.registration.engine import register_images
    from ProgressiveRegistrationLib.registration.figures import folding_figure, folding_points_lps, review_figure
    from ProgressiveRegistrationLib.registration.quality import folding_clusters, quality_maps
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    pair = simulate(sitk.ReadImage(str(SAMPLE)), seed=6, n_landmarks=4)
    result = register_images(pair.inhale, pair.exhale, load_model(tiny_model), refinement=None)
    clean = quality_maps(result, pair.inhale, pair.exhale)
    assert folding_points_lps(result).shape == (0, 3) and not _red(review_figure(result, clean)).any()
    centre = tuple(np.round(np.argwhere(clean.lungs).mean(0)).astype(int))
    assert clean.grid == result.out_grid  # a small grid: the maps are on the transform's grid
    jac = result.jacobian.copy()
    jac[centre] = -0.5
    folded = dataclasses.replace(result, jacobian=jac)
    np.testing.assert_allclose(folding_points_lps(folded), result.out_grid.points_to_lps(
        np.array([centre[::-1]], dtype=float)))
    maps = dataclasses.replace(clean, jacobian=jac)
    assert _red(review_figure(folded, maps)).sum() > 3 * 20  # a circle (and the voxel) on each of the 3 planes
    _, clusters = folding_clusters(folded)
    assert len(clusters) == 1 and clusters[0]["worst_det_j"] == -0.5
    assert _red(folding_figure(folded, maps, clusters)).sum() > 3 * 20


def test_plane_points_follow_the_pictures_orientation():
    from ProgressiveRegistrationLib.registration.figures import _in_plane

    pts = np.array([[3.0, 4.0, 5.0], [3.0, 4.0, 9.0], [7.2, 4.0, 5.0]])  # (i, j, k)
    shape = (10, 20, 30)  # (nk, nj, ni)
    x, y = _in_plane("axial", (5, 0, 0), shape, False, pts)
    assert x.tolist() == [3.0, 7.2] and y.tolist() == [4.0, 4.0]
    x, y = _in_plane("coronal", (0, 4, 0), shape, True, pts)  # superior at the top: rows flipped
    assert x.tolist() == [3.0, 3.0, 7.2] and y.tolist() == [4.0, 0.0, 4.0]
    x, y = _in_plane("sagittal", (0, 0, 3), shape, False, pts)
    assert x.tolist() == [4.0, 4.0] and y.tolist() == [5.0, 9.0]


def test_each_edge_names_the_side_of_the_patient_it_faces():
    """Radiological convention for LPS storage (the patient's right on the picture's left); a
    copy stored otherwise (NIfTI-like, sagittal) names its own edges, so every picture can be read."""
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.registration.figures import edge_letters, slice_position

    lps = Grid((40, 30, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert edge_letters(lps, "axial", False) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert edge_letters(lps, "coronal", True) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert edge_letters(lps, "sagittal", True) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    ras = Grid((40, 30, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert edge_letters(ras, "axial", False) == {"left": "L", "right": "R", "top": "P", "bottom": "A"}
    # Sagittal storage: i runs P -> A, j runs I -> S, k runs R -> L.
    sagittal = Grid((30, 20, 40), (1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (0, 0, 1, -1, 0, 0, 0, 1, 0))
    assert edge_letters(sagittal, "axial", False) == {"left": "P", "right": "A", "top": "I", "bottom": "S"}
    assert slice_position(lps, "axial", (5, 0, 0)) == "z = 10.0 mm"
    assert slice_position(sagittal, "axial", (5, 0, 0)) == "x = 5.0 mm"


def test_no_label_reads_minus_zero():
    from ProgressiveRegistrationLib.registration.tolerances import signed

    assert [signed(v) for v in (-0.001, 0.0, 0.04, -0.06, 1.25)] == ["0.0", "0.0", "0.0", "-0.1", "+1.2"]
    assert signed(-0.004, 2) == "0.00"


def test_a_plane_is_named_by_where_it_lies_in_the_patient():
    from ProgressiveRegistrationLib.core.grid import Grid
    from ProgressiveRegistrationLib.registration.figures import anatomical_plane

    lps = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert [anatomical_plane(lps, p) for p in ("axial", "coronal", "sagittal")] == ["axial", "coronal", "sagittal"]
    sagittal = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0, 0, 1, -1, 0, 0, 0, 1, 0))  # k runs R -> L
    assert anatomical_plane(sagittal, "axial") == "sagittal" and anatomical_plane(sagittal, "sagittal") == "coronal"
