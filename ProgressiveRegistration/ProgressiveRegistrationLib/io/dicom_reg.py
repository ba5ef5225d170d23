"""DICOM Deformable Spatial Registration objects (PS3.3 A.39.2), for radiotherapy systems
(MIM, Velocity, RayStation, SlicerRT) that take a registration as DICOM.

The object's Frame of Reference is the fixed series' (the Registered RCS). DICOM applies a
deformable registration to a point of the Registered RCS in this order (PS3.3 C.20.3.1.1):
the Pre Deformation matrix, then the grid's offset at that point, then the Post Deformation
matrix; the result addresses the sample in the Source RCS (the moving series' frame). That is
``φ(x) = x + d(x)`` of ``transform.nrrd`` (fixed -> moving, resampling direction) with both
matrices the identity, and DICOM patient coordinates are LPS mm: the grid's vectors are the
transform's own samples, without conversion. docs/CONVENTIONS.md, "DICOM registration objects".

Two items, as radiotherapy systems write them: the first registers the fixed series to its own
frame (identity), the second the moving series through the deformation grid.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import write_file
from ..core.errors import InputError
from ..core.grid import Grid
from .images import list_dicom_series

#: Deformable Spatial Registration Storage.
SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.3"
#: New UIDs are UUID-derived ("2.25." and a UUID as an integer, PS3.5 B.2): unique without a
#: registered root.
UID_PREFIX = None
IDENTITY = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
#: The patient and study attributes copied from the fixed series.
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass
class SeriesReference:
    """What a registration object needs of one DICOM series: its patient and study attributes,
    its series and frame-of-reference UIDs, and its instances (SOP class, SOP instance UIDs)."""

    attributes: dict
    series_uid: str
    frame_of_reference_uid: str
    instances: list[tuple[str, str]]

    @property
    def study_uid(self) -> str:
        return self.attributes["StudyInstanceUID"]


def series_reference(folder: str | os.PathLike, series: str | None, what: str) -> SeriesReference:
    """The :class:`SeriesReference` of the DICOM series read from ``folder`` (``series``: its UID
    or a unique prefix, when the folder holds several). InputError, naming ``what``, when
    ``folder`` is not a DICOM folder or its files lack the UIDs a registration object needs."""

    if not Path(folder).is_dir():
        raise InputError(f"{what}: {folder} is not a DICOM folder: a DICOM registration object references its "
                         "series by their UIDs (register DICOM series to write one)")
    found = list_dicom_series(folder)
    if series is not None:
        found = [s for s in found if s.uid == series] or [s for s in found if s.uid.startswith(series)]
    if len(found) != 1:
        raise InputError(f"{what}: {folder} holds {len(found)} DICOM series; name the one registered")
    return series_reference_of_files(found[0].files, what)


def series_reference_of_files(files, what: str) -> SeriesReference:
    """The :class:`SeriesReference` of one series' DICOM files (their headers are read)."""
    import pydicom

    try:
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise InputError(f"{what}: a DICOM file of the series cannot be read ({err})") from None
    first = headers[0]
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID",
                           "SOPInstanceUID") if not first.get(k)]
    if missing:
        raise InputError(f"{what}: its DICOM files lack {', '.join(missing)}, which a registration object needs")
    frames = {h.get("FrameOfReferenceUID") for h in headers}
    if len(frames) != 1:
        raise InputError(f"{what}: the series' slices name {len(frames)} frames of reference")
    attributes = {k: first.get(k, "") for k in PATIENT_STUDY}
    return SeriesReference(attributes, str(first.SeriesInstanceUID), str(first.FrameOfReferenceUID),
                           [(str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in headers])


def right_handed(displacement: sitk.Image) -> tuple[np.ndarray, Grid]:
    """The field's samples ``[k, j, i, 3]`` and grid, with the slice axis reversed where the
    grid is left-handed: DICOM's third grid axis is the row direction crossed with the column
    direction. The same samples at the same points, in another order."""
    grid = Grid.from_image(displacement)
    data = sitk.GetArrayFromImage(displacement).astype(np.float32)
    d = grid.direction_matrix
    if np.linalg.det(d) > 0:
        return data, grid
    last = np.asarray(grid.origin_lps) + (grid.size[2] - 1) * grid.spacing_mm[2] * d[:, 2]
    flipped = d.copy()
    flipped[:, 2] = -d[:, 2]
    return np.ascontiguousarray(data[::-1]), Grid(grid.size, grid.spacing_mm, tuple(last),
                                                  tuple(flipped.ravel()))


def _decimal_strings(values) -> list:
    """Values for a DS attribute: 16 characters at most, as many digits as fit."""
    from pydicom.valuerep import DSfloat

    return [DSfloat(float(v), auto_format=True) for v in values]


def _instance_references(series: SeriesReference) -> list:
    from pydicom.dataset import Dataset

    refs = []
    for sop_class, sop_instance in series.instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
        refs.append(ref)
    return refs


def registration_dataset(displacement: sitk.Image, fixed: SeriesReference, moving: SeriesReference,
                         software_version: str, description: str = "ProgressiveRegistration deformable registration",
                         now: datetime.datetime | None = None):
    """The Deformable Spatial Registration object (a ``pydicom.FileDataset``) of ``displacement``
    (``transform.nrrd``'s field: fixed -> moving, LPS mm) between the two series."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    now = now or datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = generate_uid(UID_PREFIX)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS_UID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for key, value in fixed.attributes.items():
        setattr(ds, key, value)
    ds.Modality = "REG"
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX)
    ds.SeriesNumber = 999
    ds.SeriesDescription = description
    ds.BodyPartExamined = "CHEST"  # an unpaired body part: no Laterality
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.FrameOfReferenceUID = fixed.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "ProgressiveRegistration"
    ds.ManufacturerModelName = "ProgressiveRegistration"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = software_version
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.ContentLabel = "DEFORMABLE_REG"
    ds.ContentDescription = description
    ds.ContentCreatorName = ""

    def matrix_sequence() -> list:
        item = Dataset()
        item.FrameOfReferenceTransformationMatrixType = "RIGID"
        item.FrameOfReferenceTransformationMatrix = _decimal_strings(IDENTITY)
        return [item]

    itself = Dataset()
    itself.SourceFrameOfReferenceUID = fixed.frame_of_reference_uid
    itself.ReferencedImageSequence = _instance_references(fixed)
    itself.RegistrationTypeCodeSequence = []
    itself.PreDeformationMatrixRegistrationSequence = matrix_sequence()
    itself.PostDeformationMatrixRegistrationSequence = matrix_sequence()

    data, grid = right_handed(displacement)
    cell = Dataset()
    cell.ImagePositionPatient = _decimal_strings(grid.origin_lps)
    d = grid.direction_matrix
    cell.ImageOrientationPatient = _decimal_strings([*d[:, 0], *d[:, 1]])
    cell.GridDimensions = list(grid.size)
    cell.GridResolution = [float(v) for v in grid.spacing_mm]
    cell.VectorGridData = data.astype("<f4").tobytes()
    deformed = Dataset()
    deformed.SourceFrameOfReferenceUID = moving.frame_of_reference_uid
    deformed.ReferencedImageSequence = _instance_references(moving)
    deformed.FrameOfReferenceTransformationComment = description
    deformed.RegistrationTypeCodeSequence = []
    deformed.PreDeformationMatrixRegistrationSequence = matrix_sequence()
    deformed.PostDeformationMatrixRegistrationSequence = matrix_sequence()
    deformed.DeformableRegistrationGridSequence = [cell]
    ds.DeformableRegistrationSequence = [itself, deformed]

    by_study: dict[str, dict[str, SeriesReference]] = {}
    for series in (fixed, moving):
        by_study.setdefault(series.study_uid, {})[series.series_uid] = series

    def series_items(study: dict) -> list:
        items = []
        for series in study.values():
            item = Dataset()
            item.SeriesInstanceUID = series.series_uid
            item.ReferencedInstanceSequence = _instance_references(series)
            items.append(item)
        return items

    ds.ReferencedSeriesSequence = series_items(by_study.pop(fixed.study_uid))
    if by_study:
        others = []
        for study_uid, study in by_study.items():
            item = Dataset()
            item.StudyInstanceUID = study_uid
            item.ReferencedSeriesSequence = series_items(study)
            others.append(item)
        ds.StudiesContainingOtherReferencedInstancesSequence = others
    return ds


def write_registration(path: str | os.PathLike, displacement: sitk.Image, fixed: SeriesReference,
                       moving: SeriesReference, software_version: str) -> None:
    """Write :func:`registration_dataset` atomically to ``path``."""
    ds = registration_dataset(displacement, fixed, moving, software_version)
    def save(tmp):
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except TypeError:  # pydicom 2 (Slicer 5.6)
            ds.save_as(tmp, write_like_original=False)

    write_file(path, save)


def read_registration_grid(path: str | os.PathLike) -> tuple[sitk.Image, str, str]:
    """The deformation grid of a registration object as a displacement-field image (LPS mm, on
    the grid's own geometry), with the registered and source frames of reference UIDs."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    if ds.SOPClassUID != SOP_CLASS_UID:
        raise InputError(f"{path}: not a Deformable Spatial Registration object (SOP class {ds.SOPClassUID})")
    item = next(i for i in ds.DeformableRegistrationSequence if "DeformableRegistrationGridSequence" in i)
    cell = item.DeformableRegistrationGridSequence[0]
    nx, ny, nz = (int(v) for v in cell.GridDimensions)
    data = np.frombuffer(cell.VectorGridData, dtype="<f4").reshape(nz, ny, nx, 3)
    row, col = np.asarray(cell.ImageOrientationPatient[:3], float), np.asarray(cell.ImageOrientationPatient[3:], float)
    direction = np.stack([row, col, np.cross(row, col)], axis=1)
    image = sitk.GetImageFromArray(data.astype(np.float64), isVector=True)
    image.SetOrigin(tuple(float(v) for v in cell.ImagePositionPatient))
    image.SetSpacing(tuple(float(v) for v in cell.GridResolution))
    image.SetDirection(tuple(direction.ravel()))
    return image, str(ds.FrameOfReferenceUID), str(item.SourceFrameOfReferenceUID)
