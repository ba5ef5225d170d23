"""Displacement fields as ITK images and transforms, and their files (SimpleITK only).

What Slicer's process needs to read a result, apart from the torch side of
:mod:`.transforms`: a field is a vector float image of ``φ(x) - x`` in LPS mm on its grid,
resampling direction (fixed -> moving, docs/CONVENTIONS.md), which SimpleITK reads back as a
``DisplacementFieldTransform`` and Slicer loads as a grid transform.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import write_file
from .errors import InputError
from .grid import Grid

TRANSFORM_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha", ".h5")

#: gzip is used where a sample of the voxels shrinks by at least this share (:func:`gzip_pays`).
GZIP_WORTHWHILE = 0.3
#: The sample: this many evenly spaced runs of this many bytes (zlib at level 1, ~10 ms).
GZIP_SAMPLE_RUNS, GZIP_SAMPLE_BYTES = 16, 1 << 16


def gzip_pays(image: sitk.Image) -> bool:
    """Whether writing ``image`` gzipped is worth the time: integer voxels (CT, label maps)
    always; float voxels when a sample of their bytes shrinks by :data:`GZIP_WORTHWHILE`. A
    float map's low bits are noise: a field over a lung crop shrinks by 9-18 % for 40-60 times
    the writing time, but one that is constant over most of its grid (a full-chest field, zero
    far from the lungs) by 80 % (benchmarks/results/whole_command.md)."""
    import zlib

    if "float" not in image.GetPixelIDTypeAsString():
        return True
    flat = sitk.GetArrayViewFromImage(image).reshape(-1).view(np.uint8)
    run = min(GZIP_SAMPLE_BYTES, flat.size)
    starts = np.linspace(0, flat.size - run, GZIP_SAMPLE_RUNS).astype(np.int64)
    sample = b"".join(flat[s:s + run].tobytes() for s in np.unique(starts))
    return len(zlib.compress(sample, 1)) <= (1.0 - GZIP_WORTHWHILE) * len(sample)


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool | None = None) -> None:
    """Write an image atomically (to a temporary file, then renamed). ``compress``: gzip the
    voxels; by default where it pays (:func:`gzip_pays`). A ``.gz`` name is always compressed
    (the name says so)."""
    compress = gzip_pays(image) if compress is None else compress
    write_file(path, lambda tmp: sitk.WriteImage(image, tmp, compress or str(path).lower().endswith(".gz")))


def displacement_image(disp_lps: np.ndarray, grid: Grid) -> sitk.Image:
    """An ITK displacement-field image (vector float64, LPS) from ``[k, j, i, 3]`` mm."""
    image = sitk.GetImageFromArray(np.asarray(disp_lps, dtype=np.float64), isVector=True)
    grid.apply_to(image)
    return image


def field_transform(disp_image: sitk.Image) -> sitk.DisplacementFieldTransform:
    """An ITK transform of a displacement-field image. The transform takes over the pixels
    it is given, so it gets a float64 copy and ``disp_image`` stays intact."""
    return sitk.DisplacementFieldTransform(sitk.Cast(disp_image, sitk.sitkVectorFloat64))


def write_transform(disp_image: sitk.Image, path: str | os.PathLike) -> None:
    """Write a displacement field atomically as .nrrd/.nii.gz/.mha (image) or .h5 (transform).

    All are resampling-direction fields in LPS that SimpleITK reads back as a
    DisplacementFieldTransform and Slicer loads as a grid transform.
    """
    name = str(path).lower()
    if not name.endswith(TRANSFORM_SUFFIXES):
        raise InputError(f"{path}: unknown transform format (use one of {', '.join(TRANSFORM_SUFFIXES)})")
    if name.endswith(".h5"):
        write_file(path, lambda tmp: sitk.WriteTransform(field_transform(disp_image), tmp))
        return
    image = sitk.Cast(disp_image, sitk.sitkVectorFloat32)
    if name.endswith(".nrrd"):
        # Slicer >= 5.10 reads this key; ITK ignores it.
        image.SetMetaData("displacement field type", "resampling")
        image.SetMetaData("intent_code", "1006")
    write_image(image, path)


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Any ITK transform file (.h5, .tfm, .txt, .mat) or a displacement-field image."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such transform file")
    name = p.name.lower()
    try:
        if name.endswith((".h5", ".hdf5", ".tfm", ".txt", ".mat", ".xfm")):
            return sitk.ReadTransform(str(p))
        image = sitk.ReadImage(str(p))
    except RuntimeError as err:
        raise InputError(f"{path}: not a readable transform ({str(err).strip().splitlines()[-1]})") from None
    if image.GetNumberOfComponentsPerPixel() != image.GetDimension() or image.GetDimension() != 3:
        raise InputError(f"{path}: a displacement field needs 3 components per voxel in 3D")
    return field_transform(image)


def read_displacement_field(path: str | os.PathLike) -> sitk.Image:
    """The displacement-field image (LPS, vector float64) of a transform file we wrote."""
    tx = read_transform(path)
    try:
        return sitk.DisplacementFieldTransform(tx).GetDisplacementField()
    except (RuntimeError, TypeError):
        raise InputError(f"{path}: not a displacement-field transform") from None


def transform_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """Apply an ITK transform to ``(n, 3)`` LPS points."""
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in np.asarray(points_lps)])
