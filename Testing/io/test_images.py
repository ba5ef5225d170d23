"""Image I/O: DICOM series (listing, choice, slice positions), file formats, files cut short
or unreadable, atomic writes."""

from __future__ import annotations

import gzip
import logging
import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_bad_input, progreg, rotation, write_dicom_series

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.io.images import DicomSeries, list_dicom_series, phase_names, read_image, write_image


def test_dicom_series_listing_and_choice(tmp_path):
    write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.111", "T00 inhale")
    exhale = write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.222", "T50 exhale")
    found = list_dicom_series(tmp_path / "4dct")
    assert {s.description for s in found} == {"T00 inhale", "T50 exhale"}
    assert all(len(s.files) == 4 for s in found)
    with pytest.raises(InputError, match="--series"):
        read_image(tmp_path / "4dct")
    image = read_image(tmp_path / "4dct", series="1.2.826.0.1.3680043.2.1125.222")
    assert image.GetSize() == (8, 8, 4) and image.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), exhale)
    r = progreg("series", tmp_path / "4dct")
    assert r.returncode == 0 and "T50 exhale" in r.stdout and "4 slices" in r.stdout


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_formats_keep_voxels_and_lps_geometry(tmp_path, suffix):
    arr = np.random.default_rng(0).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.0, 30.5, 12.0))
    image.SetDirection(rotation(0.1, -0.2, 0.3).ravel().tolist())
    write_image(image, tmp_path / f"ct{suffix}")
    back = read_image(tmp_path / f"ct{suffix}")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    a, b = Grid.from_image(image), Grid.from_image(back)
    np.testing.assert_allclose(b.index_to_lps, a.index_to_lps, atol=1e-4)


def test_unknown_or_broken_files_are_input_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.nrrd")
    image = sitk.GetImageFromArray(np.ones((3, 3, 3), np.float32))
    with pytest.raises(RuntimeError):
        write_image(image, tmp_path / "out.unknownformat")
    assert list(tmp_path.iterdir()) == [tmp_path / "notes.txt"]  # the failed write left nothing behind


# --- DICOM series with missing slices or uneven spacing -----------------------------------

def write_slices(folder, z_mm, marker_z=None, uid="1.2.826.0.1.3680043.2.1125.333", values=None):
    """An axial series, one 8x8 slice file per position ``z_mm`` (LPS mm, in file order): slice
    n holds ``values[n]`` (default 10·n) everywhere, the slice at ``marker_z`` 2000. Returns
    the slices' values."""
    folder.mkdir(parents=True, exist_ok=True)
    values = list(values) if values is not None else [2000 if z == marker_z else 10 * n for n, z in enumerate(z_mm)]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, (z, value) in enumerate(zip(z_mm, values)):
        sl = sitk.GetImageFromArray(np.full((1, 8, 8), value, np.int16))[:, :, 0]
        sl.SetSpacing((0.8, 0.8))
        for tag, v in (("0020|000e", uid), ("0008|103e", "chest"), ("0020|0013", str(n + 1)),
                       ("0020|0032", f"-3\\-3\\{z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0008|0060", "CT"),
                       ("0008|0018", f"{uid}.{n + 1}")):
            sl.SetMetaData(tag, v)
        writer.SetFileName(str(folder / f"slice_{n:03d}.dcm"))
        writer.Execute(sl)
    return values


def slice_z(image) -> np.ndarray:
    """The LPS z (mm) of every slice of an axial image."""
    return np.array([image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(image.GetSize()[2])])


@pytest.mark.parametrize("z_mm, says", [
    # Slices at 6 and 8 mm missing: ITK's averaged spacing (16/6 mm) put the 12 mm slice at 10.67 mm.
    ([0, 2, 4, 10, 12, 14, 16], "slices missing between z = 4 and 10 mm (gap 6 mm) where the series' spacing is 2 mm"),
    # 2 mm, then 3 mm: ITK read it as 2.625 mm, the 12 mm slice at 13.1 mm.
    ([0, 2, 4, 6, 9, 12, 15, 18, 21], "slices 3 mm apart between z = 6 and 21 mm where the series' spacing is 2 mm"),
], ids=["missing slices", "2 mm then 3 mm"])
def test_uneven_dicom_slices_are_placed_where_they_are(tmp_path, caplog, capfd, z_mm, says):
    values = write_slices(tmp_path / "ct", z_mm, marker_z=12)
    notes = []
    with caplog.at_level(logging.WARNING, logger="ProgressiveRegistrationLib"):
        image = read_image(tmp_path / "ct", what="fixed image", notes=notes)
    arr, z = sitk.GetArrayFromImage(image), slice_z(image)
    assert image.GetSpacing()[2] == pytest.approx(2.0) and z[0] == pytest.approx(0.0)
    assert z[np.argmax(arr[:, 0, 0])] == pytest.approx(12.0, abs=0.1)  # the marker where it was acquired
    for zk, value in zip(z_mm, values):  # every acquired slice on the grid is there unchanged
        k = np.flatnonzero(np.abs(z - zk) < 0.01)
        assert len(k) == 0 or (arr[k[0]] == value).all()
    # Between two slices: linear in their positions (z = 6 mm lies a third of the way from 4 to 10).
    if 6 not in z_mm:
        assert arr[3, 0, 0] == round(values[2] + (values[3] - values[2]) / 3)
    assert len(notes) == 1 and notes[0].startswith("fixed image: DICOM series chest: " + says)
    assert "resampled onto a uniform 2 mm grid" in notes[0]
    assert [r.getMessage() for r in caplog.records] == notes  # the console and the caller see the same line
    assert "Non uniform sampling" not in capfd.readouterr().err  # ITK's own warning is not shown


def test_even_dicom_series_reads_as_is_and_without_warning(tmp_path, caplog, capfd):
    write_slices(tmp_path / "ct", [0, 2.5, 5, 7.5, 10.0001], marker_z=5)  # rounding in the positions is no gap
    notes = []
    with caplog.at_level(logging.WARNING, logger="ProgressiveRegistrationLib"):
        image = read_image(tmp_path / "ct", notes=notes)
    assert notes == [] and caplog.records == [] and capfd.readouterr().err == ""
    assert image.GetSize()[2] == 5 and image.GetSpacing()[2] == pytest.approx(2.5, abs=1e-4)
    assert slice_z(image)[np.argmax(sitk.GetArrayFromImage(image)[:, 0, 0])] == pytest.approx(5.0, abs=0.01)


def test_irregular_dicom_series_beyond_repair_are_refused(tmp_path):
    write_slices(tmp_path / "gap", [0, 2, 4, 16, 18], marker_z=4)
    with pytest.raises(InputError, match=r"slices missing between z = 4 and 16 mm \(gap 12 mm .*not filled in"):
        read_image(tmp_path / "gap")
    # Two files at one position with different voxels: two acquisitions, not one volume.
    write_slices(tmp_path / "twice", [0, 2, 4, 4, 6], values=[0, 10, 20, 30, 40])
    with pytest.raises(InputError, match=r"two slices at z = 4 mm hold different voxels"):
        read_image(tmp_path / "twice")
    # The same slice twice (a copied file) is read once, and said.
    write_slices(tmp_path / "copy", [0, 2, 4, 4, 6], values=[0, 10, 20, 20, 40])
    notes = []
    image = read_image(tmp_path / "copy", notes=notes)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[:, 0, 0], [0, 10, 20, 40])
    assert image.GetSpacing()[2] == pytest.approx(2.0) and "1 duplicate slice file(s)" in notes[0]


def test_several_series_name_the_option_that_chooses(tmp_path):
    write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.111", "T00 inhale")
    write_dicom_series(tmp_path / "4dct", "1.2.826.0.1.3680043.2.1125.222", "T50 exhale")
    with pytest.raises(InputError, match="holds 2 DICOM series, choose one with --fixed-series UID"):
        read_image(tmp_path / "4dct", what="fixed image")
    with pytest.raises(InputError, match="choose one with --moving-series UID"):
        read_image(tmp_path / "4dct", what="moving image")
    with pytest.raises(InputError, match="--fixed-series / --moving-series; progreg synth: --series"):
        read_image(tmp_path / "4dct")
    r = progreg("register", tmp_path / "4dct", tmp_path / "4dct", "--out", tmp_path / "out")
    assert_bad_input(r, tmp_path / "out")
    assert "--fixed-series UID" in r.stderr and "T50 exhale" in r.stderr


# --- files cut short, files that cannot be read -------------------------------------------

@pytest.mark.parametrize("name, compress", [("ct.nii.gz", True), ("ct.nii", False), ("ct.mha", True),
                                            ("ct.mha", False)], ids=["nii.gz", "nii", "mha gzip", "mha raw"])
def test_truncated_files_are_refused(tmp_path, name, compress):
    arr = np.random.default_rng(1).integers(-1000, 1000, (20, 30, 40)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name), compress)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=rf"fixed image {re.escape(str(tmp_path / name))}: the file is truncated"):
        read_image(tmp_path / name, what="fixed image")
    # One line on the command line: no raw lines of ITK's readers.
    r = progreg("synth", tmp_path / name, "--out", tmp_path / "out", "--size", 32)
    assert_bad_input(r, tmp_path / "out")
    assert "truncated" in r.stderr


def test_metaimage_data_file_short_or_missing(tmp_path):
    arr = np.random.default_rng(3).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ct.mhd"))
    raw = tmp_path / "ct.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(InputError, match=r"ct.mhd: its voxel data file ct.raw is truncated \(it holds 100 of the 240"):
        read_image(tmp_path / "ct.mhd")
    raw.unlink()
    with pytest.raises(InputError, match=r"ct.mhd: its voxel data file ct.raw \(named in the header\) is missing"):
        read_image(tmp_path / "ct.mhd")


def test_complete_gzip_of_several_members_is_read(tmp_path):
    """A valid .nii.gz whose gzip trailer does not give the whole length (two gzip members,
    as `cat a.gz b.gz` makes) is decompressed to check it, and read."""
    arr = np.random.default_rng(2).integers(-1000, 1000, (6, 7, 8)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "ct.nii"))
    data = (tmp_path / "ct.nii").read_bytes()
    (tmp_path / "ct.nii.gz").write_bytes(gzip.compress(data[:500]) + gzip.compress(data[500:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "ct.nii.gz")), arr)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads files whatever their permissions (chmod 000 prevents nothing)")
def test_unreadable_files_say_permission_denied(tmp_path):
    image = sitk.GetImageFromArray(np.arange(27, dtype=np.int16).reshape(3, 3, 3))
    write_image(image, tmp_path / "ct.nrrd")
    write_slices(tmp_path / "dicom", [0, 2, 4], marker_z=2)
    (tmp_path / "ct.nrrd").chmod(0)
    for f in (tmp_path / "dicom").iterdir():
        f.chmod(0)
    try:
        with pytest.raises(InputError, match=r"ct.nrrd: permission denied \(the file exists but cannot be read\)"):
            read_image(tmp_path / "ct.nrrd", what="fixed image")
        with pytest.raises(InputError, match=r"no DICOM series found .*3 of its files cannot be read: permission denied"):
            read_image(tmp_path / "dicom")
    finally:
        (tmp_path / "ct.nrrd").chmod(0o644)
        for f in (tmp_path / "dicom").iterdir():
            f.chmod(0o644)


def test_phases_are_named_without_their_uids():
    def series(description, **tags):
        return DicomSeries("1.2.840.113619.2.55.3.604688119.868.1234567890.123456789012345678901234", description, (),
                           **tags)

    assert phase_names([series("T00"), series("T50")]) == ["T00", "T50"]
    assert phase_names([series("4DCT", series_number="5"), series("4DCT", series_number="6")]) == [
        "4DCT (series 5)", "4DCT (series 6)"]
    assert phase_names([series("", trigger_time_ms="250"), series("")]) == ["phase 0", "phase 1"]
    assert phase_names([series("Lung 30%", temporal_index="1"), series("Lung 30%", temporal_index="2")]) == [
        "Lung 30% (temporal position 1)", "Lung 30% (temporal position 2)"]



def test_images_are_gzipped_where_it_pays(tmp_path):
    """Integer images are gzipped; a float map of noise is written raw (gzip would save a few
    per cent at tens of times the time); a float map that is zero over most of its grid is
    gzipped (a full-chest field); a .gz name is gzipped whatever the voxels. Each reads back
    exactly."""
    from ProgressiveRegistrationLib.core.itk_fields import gzip_pays, write_transform
    from ProgressiveRegistrationLib.io.images import write_image

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(40, 50, 60)).astype(np.float32)
    sparse = np.zeros((40, 50, 60), np.float32)
    sparse[10:20, 10:30, 20:35] = rng.normal(size=(10, 20, 15))
    ct = rng.integers(-1000, 400, size=(40, 50, 60)).astype(np.int16)
    field = sitk.GetImageFromArray(rng.normal(size=(20, 30, 40, 3)).astype(np.float32), isVector=True)
    cases = {"noise.nrrd": (noise, False), "sparse.nrrd": (sparse, True), "ct.nrrd": (ct, True),
             "noise.nii.gz": (noise, True)}
    for name, (array, gzipped) in cases.items():
        image = sitk.GetImageFromArray(array)
        if not name.endswith(".gz"):
            assert gzip_pays(image) == gzipped, name
        write_image(image, tmp_path / name)
        head = (tmp_path / name).read_bytes()[:2000]
        assert (head[:2] == b"\x1f\x8b" or b"encoding: gzip" in head) == gzipped, name
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))), array)
    assert not gzip_pays(field)
    write_transform(field, tmp_path / "transform.nrrd")
    assert b"encoding: raw" in (tmp_path / "transform.nrrd").read_bytes()[:2000]
