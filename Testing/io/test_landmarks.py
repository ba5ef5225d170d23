"""Landmark files: every format gives the same LPS points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.io import landmarks


def test_landmark_formats_agree(tmp_path):
    pts_lps = np.array([[1.5, -2.0, 30.25], [-10.0, 4.5, -7.0]])
    ras = pts_lps * [-1, -1, 1]
    (tmp_path / "a.fcsv").write_text(
        "# Markups fiducial file version = 5.6\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        + "".join(f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,F-{i},,\n" for i, p in enumerate(ras)))
    (tmp_path / "b.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
        + "".join(f"id{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,G-{i},,\n" for i, p in enumerate(pts_lps)))
    (tmp_path / "c.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"label": f"P{i}", "position": list(p)} for i, p in enumerate(ras)]}]}))
    (tmp_path / "d.txt").write_text("point\n2\n" + "".join(f"{p[0]} {p[1]} {p[2]}\n" for p in pts_lps), encoding="utf-8")
    (tmp_path / "e.csv").write_text("label,r,a,s\n" + "".join(f"p{i},{p[0]},{p[1]},{p[2]}\n" for i, p in enumerate(ras)))
    (tmp_path / "f.csv").write_text("# CoordinateSystem = LPS\nx,y,z\n" + "".join(f"{p[0]},{p[1]},{p[2]}\n" for p in pts_lps))
    landmarks.write_markups_json(tmp_path / "g.mrk.json", pts_lps)
    for name in ("a.fcsv", "b.fcsv", "c.mrk.json", "d.txt", "e.csv", "f.csv", "g.mrk.json"):
        got = landmarks.read_landmarks(tmp_path / name).to_lps()
        np.testing.assert_allclose(got, pts_lps, err_msg=name)


def test_voxel_landmark_formats(tmp_path):
    (tmp_path / "dirlab.txt").write_bytes(b"  10\t20\t5\r\n 1\t1\t1\r\n")
    (tmp_path / "index.txt").write_text("index\n2\n9 19 4\n0 0 0\n", encoding="utf-8")
    grid = Grid((50, 50, 20), (0.97, 0.97, 2.5), (0.0, 0.0, 0.0))
    a = landmarks.read_landmarks(tmp_path / "dirlab.txt").to_lps(grid)
    b = landmarks.read_landmarks(tmp_path / "index.txt").to_lps(grid)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a[0], [9 * 0.97, 19 * 0.97, 4 * 2.5])
    with pytest.raises(landmarks.InputError):
        landmarks.read_landmarks(tmp_path / "dirlab.txt").to_lps()
