"""The README's "Use the result" snippet runs as written, on a real run's outputs, and does what
the README says: the moving image on the fixed grid as `progreg register` writes it, a label
map carried, a fixed point mapped to its partner in the moving image."""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk
from conftest import ROOT, SAMPLE, progreg

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.transforms import map_points


def _snippet(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_use_the_result_snippet_does_what_the_readme_says(tmp_path, tiny_model, monkeypatch):
    fixed = sitk.ReadImage(str(SAMPLE))
    moving = sitk.Image(fixed)
    moving.SetOrigin(tuple(np.add(fixed.GetOrigin(), (4.0, -3.0, 5.0))))  # the same anatomy, moved
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nrrd"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nrrd"))
    sitk.WriteImage(sitk.Cast(moving < -500, sitk.sitkUInt8), str(tmp_path / "moving_labels.nrrd"))
    r = progreg("register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "--out", tmp_path / "out",
                "--model", tiny_model, "--no-refine", "--no-report", "--no-overview",
                "--moving-segmentation", tmp_path / "moving_labels.nrrd")
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    # The snippet's point, moved inside this small image (where the field is not zero).
    inside = fixed.TransformContinuousIndexToPhysicalPoint((20.5, 30.5, 40.5))
    snippet = _snippet("Use the result")
    assert "(10.0, -20.0, 30.0)" in snippet
    exec(compile(snippet.replace("(10.0, -20.0, 30.0)", repr(inside)), "README.md", "exec"), scope)  # noqa: S102
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "warped_moving.nrrd")))
    readme = sitk.GetArrayFromImage(scope["warped"])
    assert ours.shape == readme.shape and np.percentile(np.abs(ours - readme), 99) < 1.0  # HU
    carried = sitk.GetArrayFromImage(scope["carried"])
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "moving_segmentation.nrrd")))
    assert (carried == written).mean() > 0.99
    # The partner: the point plus the field's displacement there (the resampling direction), as
    # the library maps landmarks for tre.csv.
    field = sitk.ReadImage(str(tmp_path / "out" / "transform.nrrd"))
    expected = map_points(sitk.GetArrayFromImage(field), Grid.from_image(field), np.array([inside]))[0]
    assert np.linalg.norm(np.subtract(expected, inside)) > 0.1  # the field moves it
    np.testing.assert_allclose(scope["partner"], expected, atol=1e-4)
