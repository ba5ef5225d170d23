"""Landmark files: every format gives the same LPS points."""

from __future__ import annotations

import json
import os

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


def test_malformed_points_name_the_file_and_the_point(tmp_path):
    """A point that cannot be read is one error naming the file and the point: its control
    point number in a ``.mrk.json``, its line (1-based, as an editor shows it) in a text file."""
    doc = {"markups": [{"coordinateSystem": "LPS", "controlPoints": [
        {"label": "F-1", "position": [1, 2, 3]}, {"label": "F-2", "positionStatus": "defined"}]}]}
    (tmp_path / "nopos.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(landmarks.InputError, match=r"nopos.mrk.json: control point 2 \(F-2\): has no position"):
        landmarks.read_landmarks(tmp_path / "nopos.mrk.json")
    # As Slicer writes a point not placed yet: an empty position and its status.
    doc["markups"][0]["controlPoints"][1] = {"label": "F-2", "position": "", "positionStatus": "undefined"}
    (tmp_path / "unplaced.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(landmarks.InputError, match=r"control point 2 \(F-2\): is not placed \(positionStatus 'undefined'\)"):
        landmarks.read_landmarks(tmp_path / "unplaced.mrk.json")
    doc["markups"][0]["controlPoints"][1] = {"position": [1, 2]}
    (tmp_path / "short.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(landmarks.InputError, match=r"short.mrk.json: control point 2: position must be 3 numbers"):
        landmarks.read_landmarks(tmp_path / "short.mrk.json")

    (tmp_path / "cut.csv").write_text("# CoordinateSystem = LPS\nlabel,x,y,z\n\np1,1,2,3\np2,4,5\n")
    with pytest.raises(landmarks.InputError, match=r"cut.csv:5: 3 column\(s\) where 4 are needed \(no z\): 'p2,4,5'"):
        landmarks.read_landmarks(tmp_path / "cut.csv")
    (tmp_path / "empty.csv").write_text("l,p,s\n1,2,3\n4,,6\n")
    with pytest.raises(landmarks.InputError, match=r"empty.csv:3: a coordinate is empty"):
        landmarks.read_landmarks(tmp_path / "empty.csv")
    (tmp_path / "cut.fcsv").write_text("# Markups fiducial file version = 5.6\n# CoordinateSystem = LPS\n"
                                       "# columns = id,x,y,z,label\nid1,1,2,3,A\nid2,4\n")
    with pytest.raises(landmarks.InputError, match=r"cut.fcsv:5: 2 column\(s\) where 4 are needed \(no y, z\)"):
        landmarks.read_landmarks(tmp_path / "cut.fcsv")
    (tmp_path / "elastix.txt").write_text("point\n2\n\n1 2 3\n4 5 x\n", encoding="utf-8")
    with pytest.raises(landmarks.InputError, match=r"elastix.txt:5: expected numbers, got '4 5 x'"):
        landmarks.read_landmarks(tmp_path / "elastix.txt")


def test_landmark_lines_count_every_line(tmp_path):
    """Comment and blank lines count: the line of a bad value is the editor's line."""
    (tmp_path / "lps.csv").write_text("# CoordinateSystem = LPS\n# made by hand\nx,y,z\n1,2,3\n\n4,5,nan\n")
    with pytest.raises(landmarks.InputError, match=r"lps.csv:6: NaN or infinite coordinate"):
        landmarks.read_landmarks(tmp_path / "lps.csv")


def test_missing_or_unreadable_landmark_files(tmp_path):
    with pytest.raises(landmarks.InputError, match="no such landmark file"):
        landmarks.read_landmarks(tmp_path / "missing.fcsv")
    with pytest.raises(landmarks.InputError, match="no such landmark file"):
        landmarks.read_landmarks(tmp_path)  # a folder
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions (chmod 000 prevents nothing)")
    (tmp_path / "locked.csv").write_text("l,p,s\n1,2,3\n")
    (tmp_path / "locked.csv").chmod(0)
    try:
        with pytest.raises(landmarks.InputError,
                           match=r"locked.csv: permission denied \(the landmark file exists but cannot be read\)"):
            landmarks.read_landmarks(tmp_path / "locked.csv")
    finally:
        (tmp_path / "locked.csv").chmod(0o644)
