"""The batch manifest: cases read with their paths, bad manifests refused whole with every problem listed."""

from __future__ import annotations

import pytest
from conftest import assert_bad_input, progreg

from ProgressiveRegistrationLib.batch.manifest import read_manifest
from ProgressiveRegistrationLib.core.errors import InputError


def test_pairs_and_4dct_cases_with_relative_paths(tmp_path):
    for name in ("f.nrrd", "m.nrrd", "f.mrk.json", "m.mrk.json"):
        (tmp_path / "data" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_text("x")
    for k in range(3):
        (tmp_path / "4d").mkdir(exist_ok=True)
        (tmp_path / "4d" / f"phase_{k}.nii.gz").write_text("x")
    (tmp_path / "m.csv").write_text("id,fixed,moving,fixed_landmarks,moving_landmarks,phases,reference\n"
                                    "p1,data/f.nrrd,data/m.nrrd,data/f.mrk.json,data/m.mrk.json,,\n"
                                    f"p2,{tmp_path / 'data' / 'f.nrrd'},data/m.nrrd,,,,\n"
                                    "c4d,,,,,4d/phase_*.nii.gz,1\n")
    p1, p2, c4d = read_manifest(tmp_path / "m.csv")
    assert p1.fixed == tmp_path / "data" / "f.nrrd" and p1.moving_landmarks == tmp_path / "data" / "m.mrk.json"
    assert p2.fixed_landmarks is None and not p2.is_4d
    assert c4d.is_4d and c4d.reference == 1 and [p.name for p in c4d.phases] == [f"phase_{k}.nii.gz" for k in range(3)]


def test_every_problem_is_listed_before_anything_runs(tmp_path):
    (tmp_path / "f.nrrd").write_text("x")
    (tmp_path / "m.csv").write_text("id,fixed,moving,fixed_landmarks,moving_landmarks,phases,reference\n"
                                    "a,f.nrrd,missing.nrrd,,,,\n"
                                    "a,f.nrrd,f.nrrd,,,,\n"
                                    "bad/id,f.nrrd,f.nrrd,,,,\n"
                                    "b,f.nrrd,f.nrrd,f.nrrd,,,\n"
                                    "c,,,,,nothing_*.nrrd,0\n"
                                    "d,,,,,f.nrrd,x\n")
    with pytest.raises(InputError) as err:
        read_manifest(tmp_path / "m.csv")
    message = str(err.value)
    for says in ("line 2 (a): moving missing.nrrd: no such file", "line 3: duplicate id 'a' (also on line 2)",
                 "line 4: id 'bad/id'", "line 5 (b): give both fixed_landmarks and moving_landmarks",
                 "line 6 (c): phases nothing_*.nrrd: nothing found", "line 7 (d): reference 'x' is not a whole number",
                 "line 7 (d): phases f.nrrd: one image", "7 problem(s)"):
        assert says in message, (says, message)
    (tmp_path / "cols.csv").write_text("name,image\nx,y\n")
    with pytest.raises(InputError, match="no 'id' column; needs the columns fixed and moving"):
        read_manifest(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("id,fixed,moving\n")
    with pytest.raises(InputError, match="no cases"):
        read_manifest(tmp_path / "empty.csv")


def test_a_bad_manifest_is_one_error_line_and_nothing_written(tmp_path):
    (tmp_path / "m.csv").write_text("id,fixed,moving\na,nope.nrrd,nope.nrrd\na,x,y\n")
    out = tmp_path / "out"
    r = progreg("batch", tmp_path / "m.csv", "--out", out, "--workers", 1)
    assert_bad_input(r, out)
    assert "5 problem(s)" in r.stderr and not out.exists()


def test_ids_that_are_the_studys_own_files_are_refused_before_any_case_runs(tmp_path):
    (tmp_path / "f.nrrd").write_text("x")
    (tmp_path / "m.csv").write_text("id,fixed,moving\n"
                                    "ok,f.nrrd,f.nrrd\n"
                                    "cohort.csv,f.nrrd,f.nrrd\n"
                                    "Cohort.HTML,f.nrrd,f.nrrd\n")  # the same file on macOS and Windows
    with pytest.raises(InputError) as err:
        read_manifest(tmp_path / "m.csv")
    message = str(err.value)
    for says in ("line 3: id 'cohort.csv' is the name of the study's own cohort.csv",
                 "line 4: id 'Cohort.HTML' is the name of the study's own cohort.html", "2 problem(s)"):
        assert says in message, (says, message)
    out = tmp_path / "out"
    r = progreg("batch", tmp_path / "m.csv", "--out", out, "--workers", 1)
    assert_bad_input(r, out)
    assert "'cohort.csv'" in r.stderr and not out.exists()
