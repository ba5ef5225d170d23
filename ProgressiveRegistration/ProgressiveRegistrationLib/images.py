"""Reading and writing images: NIfTI, NRRD, MHA/MHD, DICOM series, DIR-Lab raw ``.img``.

Every reader returns a :class:`SimpleITK.Image` with its origin, spacing and direction (LPS)
intact and checked to be a finite 3D scalar volume; every writer is atomic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .atomic import write_file
from .checks import check_volume
from .dirlab import read_raw
from .errors import InputError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".dcm")


@dataclass(frozen=True)
class DicomSeries:
    uid: str
    description: str
    files: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.uid}  {self.description or '(no description)'}  ({len(self.files)} slices)"


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Every DICOM series found (recursively) under ``folder``."""
    folder = str(folder)
    series = []
    dirs = [folder] + [str(p) for p in sorted(Path(folder).rglob("*")) if p.is_dir()]
    # GDCM warns on stderr about every folder without DICOM; we report emptiness ourselves.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        ids = {d: sitk.ImageSeriesReader.GetGDCMSeriesIDs(d) or () for d in dirs}
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for d in dirs:
        for uid in ids[d]:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid)
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.LoadPrivateTagsOn()
            description = ""
            try:
                reader.ReadImageInformation()
                if reader.HasMetaDataKey("0008|103e"):
                    description = reader.GetMetaData("0008|103e").strip()
            except RuntimeError:
                pass
            series.append(DicomSeries(uid, description, tuple(files)))
    return series


def read_dicom_series(folder: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read one DICOM series from ``folder``; ``series`` is a UID (or a unique prefix of one)."""
    found = list_dicom_series(folder)
    if not found:
        raise InputError(f"{folder}: no DICOM series found in this directory")
    if series is not None:
        found = [s for s in found if s.uid == series] or [s for s in found if s.uid.startswith(series)]
        if not found:
            raise InputError(f"{folder}: no DICOM series with UID {series!r}")
    if len(found) > 1:
        listing = "; ".join(str(s) for s in found)
        raise InputError(f"{folder}: holds {len(found)} DICOM series, choose one with --series UID: {listing}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(found[0].files))
    return reader.Execute()


def read_image(path: str | os.PathLike, series: str | None = None, what: str | None = None) -> sitk.Image:
    """Read a 3D scalar volume from a file or a DICOM directory, checked for sanity."""
    path = Path(path)
    what = what or str(path)
    if not path.exists():
        raise InputError(f"{what}: no such file or directory")
    if path.is_dir():
        image = read_dicom_series(path, series)
    elif path.name.lower().endswith(".img") and not path.with_suffix(".hdr").exists():
        image = read_raw(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise InputError(f"{what}: not a readable image ({first[-1] if first else 'unknown format'})") from None
    check_volume(image, what)
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically (write to a temporary file, then rename)."""
    write_file(path, lambda tmp: sitk.WriteImage(image, tmp, compress))


def is_image_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)

