"""A registration's files: what the writers put in them reads back as the same numbers, and
summary.json is strict JSON."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ProgressiveRegistrationLib.core.atomic import write_all
from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images, summary_of
from ProgressiveRegistrationLib.registration.outputs import (
    jacobian_image,
    json_text,
    read_tre_csv,
    registration_writers,
    write_tre_csv,
)


def test_tre_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lm = {"fixed_lps": rng.normal(size=(4, 3)), "moving_lps": rng.normal(size=(4, 3)),
          "predicted_lps": rng.normal(size=(4, 3)), "before_mm": rng.random(4), "network_mm": rng.random(4),
          "after_mm": rng.random(4)}
    lm["network_mm"], lm["after_mm"] = np.array([1.0, 0.6, 0.51, 2.0]), np.array([0.9, 1.05, 2.82, 1.0])  # c: worse
    write_tre_csv(tmp_path / "tre.csv", lm, ["a", "b", "c", "d"])
    labels, before, network, after = read_tre_csv(tmp_path / "tre.csv")
    assert labels == ["a", "b", "c", "d"]
    for read, wrote in ((before, "before_mm"), (network, "network_mm"), (after, "after_mm")):
        np.testing.assert_allclose(read, lm[wrote], atol=1e-4)
    with open(tmp_path / "tre.csv", newline="", encoding="utf-8") as f:
        worse = [row["worse_after_refinement"] for row in csv.DictReader(f)]
    assert worse == ["0", "0", "1", "0"]


def test_jacobian_image_lies_on_the_transform_grid(tiny_model):
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray((rng.random((20, 24, 28)) * 1000 - 1000).astype(np.float32))
    image.SetSpacing((1.5, 1.2, 2.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    result = register_images(image, image, load_model(tiny_model), warp_moving=False, refinement=None)
    jac = jacobian_image(result)
    assert Grid.from_image(jac) == Grid.from_image(result.displacement) == result.out_grid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(jac), result.jacobian.astype(np.float32))


def _strict(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript's, jq's) do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_summary_json_is_strict_json_when_no_landmark_lies_inside_the_images(tmp_path, tiny_model):
    """Every landmark pair outside the images: the TRE statistics are NaN in memory and null in
    summary.json, which a strict parser reads."""
    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray((rng.random((20, 24, 28)) * 1000 - 1000).astype(np.float32))
    image.SetSpacing((1.5, 1.2, 2.0))
    far = np.array([[1000.0, 1000.0, 1000.0], [-900.0, 50.0, 2000.0]])
    result = register_images(image, image, load_model(tiny_model), fixed_points_lps=far, moving_points_lps=far + 1.0,
                             refinement=None)
    summary = summary_of(result, load_model(tiny_model), "cpu")
    assert not result.landmarks["used"].any() and math.isnan(summary["tre_after_mm"]["mean"])
    write_all(tmp_path / "out", registration_writers(result, summary, image, image, ["a", "b"], warped=False,
                                                     overview=False))
    text = (tmp_path / "out" / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    written = _strict(text)
    assert written["tre_after_mm"]["mean"] is None and written["landmarks"]["used"] == 0


def test_json_safe_turns_every_non_finite_number_into_null():
    data = {"a": float("nan"), "b": [np.float32("inf"), -np.inf, 1.5], "c": np.array([1.0, np.nan]),
            "d": (np.int64(3), np.bool_(True)), 4: {"e": np.float64(2.0)}}
    text = json_text(data)
    assert _strict(text) == {"a": None, "b": [None, None, 1.5], "c": [1.0, None], "d": [3, True], "4": {"e": 2.0}}
    with pytest.raises(ValueError):
        json.dumps({"x": float("nan")}, allow_nan=False)  # what json_text relies on, should a NaN slip through
