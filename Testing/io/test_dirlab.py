"""The DIR-Lab data: the paper's Table II 'before' column, both namings, the raw reader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import progreg

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.io import dirlab
from ProgressiveRegistrationLib.io.images import read_image


def test_dirlab_reproduces_table_ii(dirlab_root):
    r = progreg("dirlab", dirlab_root, "--json")
    assert r.returncode == 0, r.stderr
    cases = json.loads(r.stdout)["cases"]
    assert sorted(cases, key=int) == [str(c) for c in range(1, 11)]
    for case, v in cases.items():
        assert v["n"] == 300
        assert v["before_mm"]["mean"] == pytest.approx(v["paper_before_mm"]["mean"], abs=0.01), case
        assert v["before_mm"]["sd"] == pytest.approx(v["paper_before_mm"]["sd"], abs=0.02), case


def test_dirlab_accepts_case8deploy(dirlab_root, tmp_path):
    shutil.copytree(dirlab_root / "Case8Pack", tmp_path / "Case8Deploy")
    r = progreg("dirlab", tmp_path, "--cases", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cases"]["8"]["before_mm"]["mean"] == pytest.approx(14.99, abs=0.01)


def test_raw_reader_takes_the_case_geometry(tmp_path):
    case = dirlab.CASES[2]
    data = np.random.default_rng(0).integers(-1000, 1000, case.size[::-1], dtype=np.int16)
    path = tmp_path / "Case2Pack" / "Images" / "case2_T00_s.img"
    path.parent.mkdir(parents=True)
    data.astype("<i2").tofile(path)
    image = read_image(path)  # no .hdr beside it: DIR-Lab raw, geometry from the case table
    assert image.GetSize() == case.size and image.GetSpacing() == pytest.approx(case.spacing_mm)
    assert image.GetOrigin() == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), data)
    data[:-1].astype("<i2").tofile(tmp_path / "case2_T50_s.img")
    with pytest.raises(InputError, match="case table says 256x256x112"):
        read_image(tmp_path / "case2_T50_s.img")
    data.astype("<i2").tofile(tmp_path / "scan.img")
    with pytest.raises(InputError, match="cannot tell the DIR-Lab case"):
        read_image(tmp_path / "scan.img")
