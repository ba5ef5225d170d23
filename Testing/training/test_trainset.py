"""The trainer's data: DICOM series and phantoms as training images."""

from __future__ import annotations

import pytest
from conftest import read_log, run_train, write_dicom_series

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.training.trainset import collect_images


def test_dicom_series_as_training_images(tmp_path):

    from ProgressiveRegistrationLib.model.config import SynthesisConfig
    from ProgressiveRegistrationLib.training.synthesis import load_ref

    write_dicom_series(tmp_path / "4dct", "1.2.3.111", "T00", n=8)
    write_dicom_series(tmp_path / "4dct", "1.2.3.222", "T50", n=8)
    refs = collect_images([str(tmp_path / "4dct")])
    assert sorted(r.split("::")[1] for r in refs) == ["1.2.3.111", "1.2.3.222"]
    vol = load_ref(refs[0], SynthesisConfig(size=16, crop_to_lungs=False))
    assert vol.hu.shape == (16, 16, 16)


def test_phantoms_as_training_images(tmp_path):

    assert collect_images(["phantom:3-5"]) == ["phantom:3", "phantom:4", "phantom:5"]
    with pytest.raises(InputError, match="phantom:SEED"):
        collect_images(["phantom:x"])
    r = run_train(tmp_path / "ph", "--images", "phantom:0-1", "--set", "train.iterations=4", "train.snapshot_every=2")
    assert r.returncode == 0, r.stderr
    assert len(read_log(tmp_path / "ph")) == 2
