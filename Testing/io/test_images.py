"""Image I/O: DICOM series (listing, choice), file formats, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import progreg, rotation, write_dicom_series

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.io.images import list_dicom_series, read_image, write_image


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
