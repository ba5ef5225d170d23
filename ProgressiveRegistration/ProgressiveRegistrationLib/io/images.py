"""Reading and writing images: NIfTI, NRRD, MHA/MHD, DICOM series, DIR-Lab raw ``.img``.

Every reader returns a :class:`SimpleITK.Image` with its origin, spacing and direction (LPS)
intact and checked to be a finite 3D scalar volume; every writer is atomic.

What is refused, with one line (:class:`InputError`), rather than read wrong:

* a file cut short (an interrupted copy or download): NIfTI (``.nii``, ``.nii.gz``) and
  MetaImage (``.mha``, ``.mhd``) files are checked against the voxel bytes their header
  announces (ITK reads a short NIfTI file as an image padded with zeros), and a ``.mhd``'s
  data file must exist;
* a file or folder that exists but cannot be read (permission denied);
* a DICOM series whose slices cannot be put on one grid: slices of different orientations,
  two files at one position with different voxels (several acquisitions in one series), a
  gap between neighbouring slices wider than :data:`MAX_SLICE_GAP_MM` (or two spacings, where
  that is wider), or spacings so uneven that a uniform grid would need over twice the slices.

A DICOM series with missing slices or uneven spacing is not read with an averaged spacing
(ITK's way, which puts slices millimetres from where they were acquired): its slices are
placed at their own positions (Image Position (Patient), 0020,0032, along the normal of the
Image Orientation (Patient), 0020,0037) and resampled, linearly between neighbours, onto a
uniform grid with the series' smallest spacing, from its first slice to the last whole
step; a warning names the gaps (logged, and added to the caller's ``notes``). A file
repeated (same position, same voxels) is read once, with a warning.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.checks import check_volume
from ..core.errors import InputError
from ..core.itk_fields import write_image  # noqa: F401 - the image writer, beside the readers
from .dirlab import read_raw

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".dcm")

log = logging.getLogger(__name__)

#: Slices within this distance (mm) of a uniform grid count as uniform, and two slices this
#: close as one position: DICOM writes positions as decimal strings, often rounded.
SLICE_TOLERANCE_MM = 0.05
#: The widest gap (mm) between neighbouring slices that is filled by interpolation (or two
#: spacings, where that is wider: one missing thick slice). Across a wider one the lung's
#: vessels and fissures would be made up, not read.
MAX_SLICE_GAP_MM = 10.0


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


def phase_names(series: list[DicomSeries]) -> list[str]:
    """A short, distinct name per series of a 4DCT export, for tables and figures: its
    description where the descriptions tell the series apart; else the description with the
    first phase tag that does (phase %, Temporal Position Index, Trigger Time, Series Number),
    else with its position in the list; never the 64-character Series Instance UID."""
    descriptions = [s.description.strip() for s in series]
    if all(descriptions) and len(set(descriptions)) == len(descriptions):
        return descriptions
    tags = ((lambda s: f"{s.phase_percent:g} %" if s.phase_percent is not None else ""),
            (lambda s: f"temporal position {s.temporal_index}" if s.temporal_index else ""),
            (lambda s: f"trigger {s.trigger_time_ms} ms" if s.trigger_time_ms else ""),
            (lambda s: f"series {s.series_number}" if s.series_number else ""))
    chosen = [f"phase {k}" for k in range(len(series))]
    for tag in tags:
        values = [tag(s) for s in series]
        if all(values) and len(set(values)) == len(values):
            chosen = values
            break
    return [f"{d} ({t})" if d else t for d, t in zip(descriptions, chosen)]


#: The option that picks a series, by what the caller reads (``what`` of :func:`read_image`).
SERIES_OPTIONS = {"fixed image": "--fixed-series", "moving image": "--moving-series"}


def read_dicom_series(folder: str | os.PathLike, series: str | None = None, what: str | None = None,
                      notes: list[str] | None = None) -> sitk.Image:
    """Read one DICOM series from ``folder``; ``series`` is a UID (or a unique prefix of one).

    ``what`` names the image in messages, and the option that chooses a series when the
    folder holds several (:data:`SERIES_OPTIONS`). Warnings about the series' slices are
    logged and appended to ``notes``."""
    label = what if what and str(folder) in what else (f"{what} {folder}" if what else str(folder))
    found = list_dicom_series(folder)
    if not found:
        unreadable = [p for p in Path(folder).rglob("*") if p.is_file() and not os.access(p, os.R_OK)]
        why = f" ({len(unreadable)} of its files cannot be read: permission denied)" if unreadable else ""
        raise InputError(f"{label}: no DICOM series found in this directory{why}")
    if series is not None:
        found = [s for s in found if s.uid == series] or [s for s in found if s.uid.startswith(series)]
        if not found:
            raise InputError(f"{label}: no DICOM series with UID {series!r}")
    if len(found) > 1:
        listing = "; ".join(str(s) for s in found)
        option = SERIES_OPTIONS.get(what or "")
        how = (f"choose one with {option} UID" if option else
               "choose one by its UID (progreg register: --fixed-series / --moving-series; progreg synth: --series)")
        raise InputError(f"{label}: holds {len(found)} DICOM series, {how}: {listing}")
    return read_series(found[0], what, notes)


def read_series(series: DicomSeries, what: str | None = None, notes: list[str] | None = None) -> sitk.Image:
    """The volume of one listed DICOM series (checked like every image), its slices where
    their headers place them (see the module docstring). ``what`` names the image in
    messages; a warning about the slices is logged and appended to ``notes``."""
    label = f"DICOM series {series.description or series.uid}"
    label = f"{what}: {label}" if what else label
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's position, for _place_slices
    # ITK warns on stderr of uneven slices ("Non uniform sampling or missing slices detected")
    # and averages the spacing; _place_slices puts them right and says so in one warning.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(f"{label}: not readable ({_reason(err)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    image, warning = _place_slices(image, reader, series.files, label)
    check_volume(image, label)
    if warning:
        log.warning(warning)
        if notes is not None:
            notes.append(warning)
    return image


def _numbers(text: str, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")])
    except ValueError:
        return None
    return values if len(values) == count and np.isfinite(values).all() else None


def _mm(value: float) -> str:
    return f"{round(float(value), 2):g}"


def _place_slices(image: sitk.Image, reader: sitk.ImageSeriesReader, files, label: str
                  ) -> tuple[sitk.Image, str | None]:
    """``image`` (ITK's stack of ``files``, slice k = file k, spacing averaged) with its slices
    at the positions their headers give: unchanged when they are evenly spaced and in order,
    else re-stacked and resampled onto a uniform grid along the slice normal. Returns the
    image and a warning (None when there is nothing to say). A series without positions
    (one file, a multi-frame file, no Image Position tags) is returned as read."""
    n = len(files)
    if n < 2 or image.GetSize()[2] != n:
        return image, None
    ipp, iop = [], []
    for k in range(n):
        if not (reader.HasMetaDataKey(k, "0020|0032") and reader.HasMetaDataKey(k, "0020|0037")):
            return image, None
        ipp.append(_numbers(reader.GetMetaData(k, "0020|0032"), 3))
        iop.append(_numbers(reader.GetMetaData(k, "0020|0037"), 6))
        if ipp[-1] is None or iop[-1] is None:
            return image, None
    ipp, iop = np.array(ipp), np.array(iop)
    if np.abs(iop - iop[0]).max() > 1e-3:
        raise InputError(f"{label}: its slices have different orientations (Image Orientation (Patient) "
                         "differs): several acquisitions in one series cannot be stacked into one volume")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    normal /= np.linalg.norm(normal)
    position = ipp @ normal  # mm along the slice normal, the axis ITK's third index follows
    axis = int(np.argmax(np.abs(normal)))
    aligned = abs(normal[axis]) > 0.99  # an axial, coronal or sagittal stack: say "z = ..." etc.

    def between(a: int, b: int) -> str:
        if aligned:
            return f"between {'xyz'[axis]} = {_mm(ipp[a, axis])} and {_mm(ipp[b, axis])} mm"
        return f"between {_mm(position[a])} and {_mm(position[b])} mm along the slice normal"

    arr = sitk.GetArrayViewFromImage(image)
    keep: list[int] = []
    for k in np.argsort(position, kind="stable"):
        if keep and position[k] - position[keep[-1]] <= SLICE_TOLERANCE_MM:
            if not np.array_equal(arr[k], arr[keep[-1]]):
                at = (f"{'xyz'[axis]} = {_mm(ipp[k, axis])} mm" if aligned
                      else f"{_mm(position[k])} mm along the slice normal")
                raise InputError(f"{label}: two slices at {at} hold different voxels ({Path(files[keep[-1]]).name}, "
                                 f"{Path(files[k]).name}): the series mixes several acquisitions or phases")
            continue  # the same slice twice (a copied file): read once
        keep.append(int(k))
    duplicates = n - len(keep)
    said = [f"{duplicates} duplicate slice file(s) (another file's position and voxels) read once"] if duplicates else []
    s = position[keep]
    if len(keep) < 2:
        return _stack(image, arr[keep], ipp[keep[0]], normal, 1.0), f"{label}: " + "; ".join(said)
    gaps = np.diff(s)
    even = (s[-1] - s[0]) / (len(s) - 1)
    if np.abs(s - (s[0] + even * np.arange(len(s)))).max() <= SLICE_TOLERANCE_MM:
        if keep == list(range(n)):
            return image, None
        return _stack(image, arr[keep], ipp[keep[0]], normal, even), f"{label}: " + "; ".join(said) if said else None

    spacing = float(gaps[gaps <= gaps.min() + SLICE_TOLERANCE_MM].mean())  # the smallest, jitter averaged
    widest = int(np.argmax(gaps))
    if gaps[widest] > max(MAX_SLICE_GAP_MM, 2 * spacing) + SLICE_TOLERANCE_MM:
        raise InputError(f"{label}: slices missing {between(keep[widest], keep[widest + 1])} (gap "
                         f"{_mm(gaps[widest])} mm where the series' spacing is {_mm(spacing)} mm): a gap over "
                         f"{_mm(max(MAX_SLICE_GAP_MM, 2 * spacing))} mm is not filled in; the series is incomplete")
    count = math.floor((s[-1] - s[0] + SLICE_TOLERANCE_MM) / spacing) + 1
    if count > 2 * len(s):
        raise InputError(f"{label}: slice spacing too uneven to resample (gaps from {_mm(gaps.min())} to "
                         f"{_mm(gaps.max())} mm: a uniform {_mm(spacing)} mm grid would need {count} slices for "
                         f"{len(s)} files)")
    # The irregular gaps, runs of equal ones together.
    runs: list[list[int]] = []
    for i in np.flatnonzero(np.abs(gaps - spacing) > SLICE_TOLERANCE_MM):
        if runs and runs[-1][1] == i and abs(gaps[i] - gaps[runs[-1][0]]) <= SLICE_TOLERANCE_MM:
            runs[-1][1] = i + 1
        else:
            runs.append([int(i), int(i) + 1])
    parts = []
    for first, last in runs:
        gap = gaps[first]
        where = between(keep[first], keep[last])
        if abs(gap / spacing - round(gap / spacing)) * spacing <= SLICE_TOLERANCE_MM:
            several = f"{last - first} gaps of {_mm(gap)} mm" if last - first > 1 else f"gap {_mm(gap)} mm"
            parts.append(f"slices missing {where} ({several})")
        else:
            parts.append(f"slices {_mm(gap)} mm apart {where}")
    shown_parts = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more irregular gaps" if len(parts) > 3 else "")
    left = s[-1] - (s[0] + (count - 1) * spacing)
    tail = f" (the last {_mm(left)} mm, less than a step, left out)" if left > SLICE_TOLERANCE_MM else ""
    said.insert(0, f"{shown_parts} where the series' spacing is {_mm(spacing)} mm; its slices are placed at their "
                   f"own positions and resampled onto a uniform {_mm(spacing)} mm grid{tail}")
    out = np.empty((count, *arr.shape[1:]), arr.dtype)
    target = s[0] + spacing * np.arange(count)
    below = np.clip(np.searchsorted(s, target + SLICE_TOLERANCE_MM, side="right") - 1, 0, len(s) - 1)
    for m, (t, j) in enumerate(zip(target, below)):
        if abs(t - s[j]) <= SLICE_TOLERANCE_MM:
            out[m] = arr[keep[j]]
            continue
        w = (t - s[j]) / (s[j + 1] - s[j])
        mixed = (1.0 - w) * arr[keep[j]] + w * arr[keep[j + 1]]
        out[m] = np.rint(mixed) if out.dtype.kind in "iu" else mixed
    return _stack(image, out, ipp[keep[0]], normal, spacing), f"{label}: " + "; ".join(said)


def _stack(image: sitk.Image, slices: np.ndarray, origin, normal, spacing: float) -> sitk.Image:
    """``slices`` (``[k, j, i]``) as a volume with ``image``'s in-plane geometry, its first
    slice at ``origin`` (LPS mm) and the next ones ``spacing`` mm apart along ``normal``."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(slices))
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    direction[:, 2] = normal
    out.SetDirection(tuple(direction.ravel()))
    out.SetSpacing((*image.GetSpacing()[:2], float(spacing)))
    out.SetOrigin(tuple(float(v) for v in origin))
    return out


def _reason(err: RuntimeError) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else "unknown format"


#: Bytes per voxel of MetaImage element types (MET_LONG is left out: its size varies).
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _nifti_bytes(header: bytes) -> int | None:
    """The bytes a NIfTI-1 or NIfTI-2 file holds up to its last voxel, by its header (vox_offset
    + voxels × bitpix / 8); None if ``header`` is no NIfTI header."""
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
        if len(header) >= 348 and size == 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
        elif len(header) >= 540 and size == 540:  # NIfTI-2
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1:dims[0] + 1]):
            return None
        return max(offset, size) + math.prod(dims[1:dims[0] + 1]) * bitpix // 8
    return None


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size of a gzip file, decompressing it; None if it ends early."""
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                size += len(chunk)
    except (EOFError, OSError, gzip.BadGzipFile):
        return None
    return size


def _check_complete(path: Path, label: str) -> None:
    """Refuse a NIfTI or MetaImage file that holds fewer bytes than its header announces (a
    file cut short). Cheap: the header and the file's length, and for ``.nii.gz`` the length
    that gzip records in its last 4 bytes; the file is decompressed only when that length
    disagrees (a truncated file; or a rare valid one, such as several gzip members)."""
    name = path.name.lower()
    truncated = f"{label}: the file is truncated"
    try:
        if name.endswith(".nii"):
            with open(path, "rb") as f:
                expected = _nifti_bytes(f.read(540))
            have = path.stat().st_size
            if expected is not None and have < expected:
                raise InputError(f"{truncated} (it holds {have} of the {expected} bytes its header announces): "
                                 "an interrupted copy or download?")
        elif name.endswith(".nii.gz"):
            try:
                with gzip.open(path, "rb") as f:
                    expected = _nifti_bytes(f.read(540))
            except (EOFError, OSError, gzip.BadGzipFile):
                return  # not gzip, or cut inside the header: ITK says what it is
            if expected is None:
                return
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                recorded = struct.unpack("<I", f.read(4))[0]  # gzip's ISIZE: the length mod 2**32
            if recorded == expected % 2**32:
                return
            have = _gzip_size(path)
            if have is None:
                raise InputError(f"{truncated} (its compressed data end early): an interrupted copy or download?")
            if have < expected:
                raise InputError(f"{truncated} (it holds {have} of the {expected} bytes its header announces): "
                                 "an interrupted copy or download?")
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path, label)
    except OSError as err:
        raise InputError(f"{label}: cannot be read ({err.strerror or err})") from None


def _check_metaimage(path: Path, label: str) -> None:
    """MetaImage: the voxel bytes after the header (``.mha``) or in the data file (``.mhd``,
    which must exist) against DimSize × ElementNumberOfChannels × the element size, or
    CompressedDataSize."""
    fields: dict[str, str] = {}
    header_end = 0
    with open(path, "rb") as f:
        for line in f:
            header_end += len(line)
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                return
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile" or header_end > 1 << 16:
                break
    data_file = fields.get("ElementDataFile", "")
    if not data_file or fields.get("HeaderSize", "0") != "0":
        return
    if data_file == "LOCAL":
        have = path.stat().st_size - header_end
    elif data_file.upper() != "LIST" and "%" not in data_file and " " not in data_file:
        if not (path.parent / data_file).is_file():
            raise InputError(f"{label}: its voxel data file {data_file} (named in the header) is missing")
        have = (path.parent / data_file).stat().st_size
    else:
        return
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            expected = int(fields["CompressedDataSize"])
        except (KeyError, ValueError):
            return
    else:
        try:
            voxels = math.prod(int(v) for v in fields["DimSize"].split())
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            expected = voxels * channels * _MET_BYTES[fields["ElementType"]]
        except (KeyError, ValueError):
            return
    if have < expected:
        what = "the file" if data_file == "LOCAL" else f"its voxel data file {data_file}"
        raise InputError(f"{label}: {what} is truncated (it holds {have} of the {expected} voxel bytes the header "
                         "announces): an interrupted copy or download?")


def read_image(path: str | os.PathLike, series: str | None = None, what: str | None = None,
               notes: list[str] | None = None, check: bool = True) -> sitk.Image:
    """Read a 3D scalar volume from a file or a DICOM directory, checked for sanity
    (:func:`checks.check_volume`; ``check=False`` for a mask, which may be all one value).

    ``series``: the UID of the DICOM series to read when a folder holds several. ``what``
    names the image in messages (default: the path). Warnings about what was read (a DICOM
    series' missing or uneven slices) are logged and appended to ``notes``."""
    path = Path(path)
    label = what if what and str(path) in what else (f"{what} {path}" if what else str(path))
    try:
        is_dir = path.is_dir()
    except PermissionError:
        raise InputError(f"{label}: permission denied (a folder on its path cannot be read)") from None
    try:
        if not is_dir:
            open(path, "rb").close()
    except FileNotFoundError:
        raise InputError(f"{label}: no such file or directory") from None
    except PermissionError:
        raise InputError(f"{label}: permission denied (the file exists but cannot be read)") from None
    except OSError as err:
        raise InputError(f"{label}: cannot be read ({err.strerror or err})") from None
    if is_dir:
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"{label}: permission denied (the folder exists but cannot be read)")
        image = read_dicom_series(path, series, what, notes)
    elif path.name.lower().endswith(".img") and not path.with_suffix(".hdr").exists():
        image = read_raw(path)
    else:
        _check_complete(path, label)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputError(f"{label}: not a readable image ({_reason(err)})") from None
        if check:
            check_volume(image, label)  # (a DICOM series is checked as it is read)
    return image




def is_image_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)

