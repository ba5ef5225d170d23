"""Reading and writing images: NIfTI, NRRD, MHA/MHD, DICOM series, DIR-Lab raw ``.img``.

Every reader returns a :class:`SimpleITK.Image` with its origin, spacing and direction (LPS)
intact and checked to be a finite 3D scalar volume; every writer is atomic.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..core.atomic import write_file
from ..core.checks import check_volume
from ..core.errors import InputError
from .dirlab import read_raw

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".dcm")


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its UID, its files (in slice order), and the tags that order the
    phases of a 4DCT export (empty strings where a tag is absent)."""

    uid: str
    description: str
    files: tuple[str, ...]
    patient_id: str = ""
    series_number: str = ""
    temporal_index: str = ""
    trigger_time_ms: str = ""
    acquisition_time: str = ""

    @property
    def phase_percent(self) -> float | None:
        """The respiratory phase (%) named in the description: ``T00``…``T90`` (the DIR-Lab
        and vendor naming: T50 is 50 %), ``50%``, ``Phase 20 %``; None if there is none."""
        m = re.search(r"(?<![A-Za-z0-9])T(\d{2})(?!\d)", self.description)
        if m:
            return float(m.group(1))
        m = re.search(r"(\d+(?:\.\d+)?)\s*%", self.description)
        return float(m.group(1)) if m else None

    def __str__(self) -> str:
        return f"{self.uid}  {self.description or '(no description)'}  ({len(self.files)} slices)"


_TAGS = {"description": "0008|103e", "patient_id": "0010|0020", "series_number": "0020|0011",
         "temporal_index": "0020|0100", "trigger_time_ms": "0018|1060", "acquisition_time": "0008|0032"}


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
            tags = dict.fromkeys(_TAGS, "")
            try:
                reader.ReadImageInformation()
                for key, tag in _TAGS.items():
                    if reader.HasMetaDataKey(tag):
                        tags[key] = reader.GetMetaData(tag).strip()
            except RuntimeError:
                pass
            series.append(DicomSeries(uid, files=tuple(files), **tags))
    return series


def phase_order(series: list[DicomSeries]) -> tuple[list[DicomSeries], str]:
    """The series of a 4DCT export in breathing-phase order, and the rule that decided it.

    The first rule that every series satisfies decides: the phase percentage in the series
    description (``T00``…``T90``, ``50%``); the Temporal Position Index (0020,0100); the
    Trigger Time (0018,1060); the Series Number (0020,0011); the Acquisition Time (0008,0032).
    Otherwise the order is the UIDs'.
    """
    def number(text: str) -> float | None:
        try:
            return float(text)
        except ValueError:
            return None

    rules = (("phase % in the series description", lambda s: s.phase_percent),
             ("Temporal Position Index (0020,0100)", lambda s: number(s.temporal_index)),
             ("Trigger Time (0018,1060)", lambda s: number(s.trigger_time_ms)),
             ("Series Number (0020,0011)", lambda s: number(s.series_number)),
             ("Acquisition Time (0008,0032)", lambda s: number(s.acquisition_time)))
    for name, key in rules:
        keys = [key(s) for s in series]
        if all(k is not None for k in keys) and len(set(keys)) == len(keys):
            return [s for _, s in sorted(zip(keys, series), key=lambda pair: pair[0])], name
    return sorted(series, key=lambda s: s.uid), "Series Instance UID (no phase tag)"


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
    return read_series(found[0])


def read_series(series: DicomSeries) -> sitk.Image:
    """The volume of one listed DICOM series (checked like every image)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    image = reader.Execute()
    check_volume(image, f"DICOM series {series.uid}")
    return image


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
        check_volume(image, what)  # (a DICOM series is checked as it is read)
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write an image atomically (write to a temporary file, then rename)."""
    write_file(path, lambda tmp: sitk.WriteImage(image, tmp, compress))


def is_image_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)

