"""report.html in a real browser: headless Chromium renders it to PNG and PDF; no image is
broken or blank, nothing is fetched from anywhere, and the numbers on the page are
summary.json's. The page says what it checked and from which files (SHA-256, DICOM UIDs),
shows value, tolerance and verdict that agree, and locates the folds."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, progreg, run_process, write_dicom_series

from ProgressiveRegistrationLib.io.landmarks import write_markups_json
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.registration.engine import register_images, summary_of
from ProgressiveRegistrationLib.registration.report import RESEARCH_NOTICE, fmt, image_info, report_writers
from ProgressiveRegistrationLib.registration.tolerances import DEFAULT_TOLERANCES, UNVERIFIED, value_text
from ProgressiveRegistrationLib.simulation.breathing import simulate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model):
    """`progreg register` with landmarks and both segmentations (network alone, the tiny model)."""
    d = tmp_path_factory.mktemp("report")
    p = simulate(sitk.ReadImage(str(SAMPLE)), seed=4, n_landmarks=30)
    sitk.WriteImage(p.inhale, str(d / "fixed.nrrd"))
    sitk.WriteImage(p.exhale, str(d / "moving.nrrd"))
    write_markups_json(d / "fixed.mrk.json", p.fixed_points_lps)
    write_markups_json(d / "moving.mrk.json", p.moving_points_lps)
    for name, image in (("fixed_labels.nrrd", p.inhale), ("moving_labels.nrrd", p.exhale)):
        labels = sitk.Cast(sitk.BinaryThreshold(image, -950, -500, 2, 0), sitk.sitkUInt8)  # the lung parenchyma
        sitk.WriteImage(labels, str(d / name))
    out = d / "out"
    r = progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", out, "--fixed-landmarks", d / "fixed.mrk.json",
                "--moving-landmarks", d / "moving.mrk.json", "--moving-segmentation", d / "moving_labels.nrrd",
                "--fixed-segmentation", d / "fixed_labels.nrrd", "--model", tiny_model, "--no-refine", "--json")
    assert r.returncode == 0, r.stderr
    return d, out, json.loads(r.stdout)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_report_holds_every_check_and_equals_the_summary(registered):
    _, out, summary = registered
    assert {"report.html", "quality.nrrd", "inverse_consistency.nrrd"} <= set(summary["files"])
    assert json.loads((out / "summary.json").read_text())["quality"] == summary["quality"]
    page = (out / "report.html").read_text(encoding="utf-8")
    checks = summary["quality"]["checks"]
    names = {r["check"] for r in checks}
    assert {"tre_mean_mm", "tre_outliers_percent", "tre_p95_mm", "jacobian_min", "folding_percent",
            "lung_jacobian_outside_percent", "lung_ncc_gain", "lung_ncc_after", "dice[2]",
            "mean_surface_distance_mm[2]", "hd95_mm[2]"} <= names
    cells = dict(re.findall(r'<td class=num data-check="([^"]+)">([^<]*)</td>', page))
    assert {html.unescape(k): v for k, v in cells.items()} == {r["check"]: value_text(r) for r in checks}
    verdicts = re.findall(r'data-verdict="(PASS|WARN|FAIL|UNVERIFIED|n/a)"', page)
    assert verdicts[0] == summary["quality"]["overall"] and verdicts[1:] == [r["verdict"] for r in checks]
    # The information rows (the inverse consistency among them) are on the page, outside the checks.
    info = dict(re.findall(r'<td class=num data-info="([^"]+)">([^<]*)</td>', page))
    assert set(info) == {r["check"] for r in summary["quality"]["information"]}
    assert "inverse_consistency_mean_mm" in info and "Information (not counted in the verdict)" in page
    # The inputs as registered, with their hashes, and the TRE as summary.json has it.
    d = registered[0]
    assert "fixed.nrrd" in page and "57 × 78 × 64" in page and "LPS" in page
    for name in ("fixed.nrrd", "moving.nrrd"):
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() in page
    assert summary["inputs"]["fixed"]["sha256"] == hashlib.sha256((d / "fixed.nrrd").read_bytes()).hexdigest()
    assert f"mean {fmt(summary['quality']['measured']['tre_mm']['mean'])} mm" in page
    assert summary["quality"]["measured"]["tre_mm"]["mean"] == pytest.approx(summary["tre_after_mm"]["mean"])
    # The verdict's reasons, the research-use notice, TG-132's tolerances named, the software, the sign block.
    assert all(html.escape(r) in page for r in summary["quality"]["reasons"])
    assert html.escape(RESEARCH_NOTICE) in page and "not a medical device" in page
    assert "mean landmark TRE ≤ 2 mm" in page and "project's own" in page
    assert "ProgressiveRegistration 0." in page and "reviewer (name)" in page and "signature" in page
    model_hash = summary["provenance"]["model"]["sha256"]
    assert model_hash and model_hash in page


def test_the_report_is_self_contained(registered):
    page = (registered[1] / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert "<script" not in page and "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the page forbids any fetch should one slip in
    from matplotlib.image import imread

    pictures = _images(page)
    folds = bool(json.loads((registered[1] / "summary.json").read_text())["quality"]["folding_clusters"])
    assert len(pictures) == 3 + folds  # visual review, TRE histogram, doubt maps (and the folds, if any)
    for png in pictures:
        pixels = imread(io.BytesIO(png))
        assert pixels.shape[0] > 150 and pixels.shape[1] > 300 and pixels[..., :3].std() > 0.05


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Testing/run.sh installs Debian's chromium "
                                             "where it runs as root with apt-get)")
def test_chromium_renders_the_report_to_png_and_pdf(registered, tmp_path):
    from matplotlib.image import imread

    out = registered[1]
    url = (out / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    png, pdf = tmp_path / "page.png", tmp_path / "page.pdf"
    run_process([CHROMIUM, *FLAGS, *profile, f"--screenshot={png}", "--window-size=1200,2600", url],
                   capture_output=True, check=True)
    run_process([CHROMIUM, *FLAGS, *profile, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", url],
                   capture_output=True, check=True)
    dom = run_process([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True,
                         encoding="utf-8", errors="replace", check=True).stdout
    pixels = imread(png)
    assert pixels.shape[:2] == (2600, 1200) and pixels[..., :3].std() > 0.1  # not a blank page
    # The verdict badges are drawn in their colours (green PASS at least once).
    assert np.any(np.all(np.abs(pixels[..., :3] - np.array([0x1b, 0x7f, 0x3b]) / 255) < 0.02, axis=-1))
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000
    assert len(re.findall(r"<img ", dom)) == len(_images((out / "report.html").read_text(encoding="utf-8")))
    assert "data-verdict" in dom


def test_tolerances_file_and_no_report(registered, tmp_path, tiny_model):
    d = registered[0]
    (tmp_path / "strict.yaml").write_text("tre_mean_mm: {warn: 0.001, fail: 0.002}\n")
    out = tmp_path / "strict"
    r = progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", out, "--fixed-landmarks",
                d / "fixed.mrk.json", "--moving-landmarks", d / "moving.mrk.json", "--model", tiny_model,
                "--no-refine", "--tolerances", tmp_path / "strict.yaml")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    row = next(c for c in summary["quality"]["checks"] if c["check"] == "tre_mean_mm")
    assert row["verdict"] == "FAIL" and row["source"] == "strict.yaml" and summary["quality"]["overall"] == "FAIL"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "strict.yaml" in page and "quality checks: FAIL (tre_mean_mm FAIL" in r.stdout
    # The tolerance file is an input too: named with its hash.
    assert summary["inputs"]["tolerances"]["sha256"] == hashlib.sha256((tmp_path / "strict.yaml").read_bytes()).hexdigest()
    assert summary["inputs"]["tolerances"]["sha256"] in page
    (tmp_path / "bad.yaml").write_text("no_such_check: {warn: 1}\n")
    r = progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", tmp_path / "bad", "--model", tiny_model,
                "--tolerances", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "unknown check" in r.stderr and not (tmp_path / "bad").exists()
    r = progreg("register", d / "fixed.nrrd", d / "moving.nrrd", "--out", tmp_path / "plain", "--model", tiny_model,
                "--no-refine", "--no-report", "--json")
    files = json.loads(r.stdout)["files"]
    assert "report.html" not in files and "quality.nrrd" not in files and "quality" not in json.loads(r.stdout)


def test_register_4d_writes_one_page_and_a_report_per_phase(registered, tmp_path, tiny_model):
    d = registered[0]
    out = tmp_path / "4d"
    r = progreg("register-4d", d / "fixed.nrrd", d / "moving.nrrd", d / "moving.nrrd", "--reference", 0, "--out", out,
                "--model", tiny_model, "--no-refine", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    page = (out / "report.html").read_text(encoding="utf-8")
    links = re.findall(r'href="([^"]+)"', page)
    assert links == ["phase_1/report.html", "phase_2/report.html"] and all((out / link).is_file() for link in links)
    assert set(summary["quality"]) == {"1", "2"}
    verdicts = re.findall(r'data-verdict="(PASS|WARN|FAIL|UNVERIFIED)"', page)
    assert verdicts == [summary["quality"][k]["overall"] for k in ("1", "2")]
    # No landmarks per phase: accuracy not verified, unless a check failed.
    assert all(summary["quality"][k]["overall"] in (UNVERIFIED, "FAIL") for k in ("1", "2"))
    assert html.escape(RESEARCH_NOTICE) in page and "reviewer (name)" in page and "What was registered" in page
    phase_page = (out / "phase_1" / "report.html").read_text(encoding="utf-8")
    cells = dict(re.findall(r'<td class=num data-check="([^"]+)">([^<]*)</td>', phase_page))
    assert {html.unescape(k): v for k, v in cells.items()} == \
        {c["check"]: value_text(c) for c in summary["quality"]["1"]["checks"]}
    assert html.escape(RESEARCH_NOTICE) in phase_page and "reviewer (name)" in phase_page
    assert len(_images(page)) == 1 and (out / "phase_2" / "quality.nrrd").is_file()
    q = sitk.ReadImage(str(out / "phase_1" / "quality.nrrd"))
    assert q.GetSize() == tuple(summary["grid"]["transform_size"])


# --- the page of one result, built in-process --------------------------------------------

def _text(page: str) -> str:
    """The page's visible text, one space between cells."""
    body = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


@pytest.fixture(scope="module")
def speck(tmp_path_factory, tiny_model):
    """A result without landmarks, with a speck of folding (3 voxels, ~0.002 % of the body)
    planted in the lungs, and its summary with the input files as paths: the report's page."""
    d = tmp_path_factory.mktemp("speck")
    p = simulate(sitk.ReadImage(str(SAMPLE)), seed=5, n_landmarks=5)
    for name, image in (("fixed.nrrd", p.inhale), ("moving.nrrd", p.exhale)):
        sitk.WriteImage(image, str(d / name))
    write_markups_json(d / "fixed.mrk.json", p.fixed_points_lps)
    write_markups_json(d / "moving.mrk.json", p.moving_points_lps)
    model = load_model(tiny_model)
    result = register_images(p.inhale, p.exhale, model, refinement=None)
    jac = result.jacobian.copy()
    lungs = np.argwhere(result.lung_mask)
    worst = lungs[len(lungs) // 2]
    for n in range(3):
        jac[worst[0], worst[1], worst[2] + n] = -0.2 + 0.1 * n
    result = dataclasses.replace(result, jacobian=jac, folding_percent=100.0 * 3 / int(result.body_mask.sum()))
    summary = summary_of(result, model, "cpu")
    summary["inputs"] = {"fixed": image_info(d / "fixed.nrrd", p.inhale), "moving": image_info(d / "moving.nrrd", p.exhale),
                         "fixed_landmarks": str(d / "fixed.mrk.json"), "moving_landmarks": str(d / "moving.mrk.json")}
    summary["command_line"] = ["progreg", "register", str(d / "fixed.nrrd"), str(d / "moving.nrrd"), "--out", "o u t"]
    summary["model_meta"] = model.meta
    writers = report_writers(result, summary, p.inhale, p.exhale, [], DEFAULT_TOLERANCES)
    writers["report.html"](d / "report.html")
    return d, summary, result.out_grid.points_to_lps(worst[::-1][None].astype(float))[0]


def test_folding_value_tolerance_and_verdict_agree_on_the_rendered_page(speck):
    """0.002 % folding: the page shows a number that is visibly above "PASS ≤ 0" and below
    "WARN ≤ 0.01", beside WARN; never "0.00" beside "PASS ≤ 0.00"."""
    d, summary, _ = speck
    page = (d / "report.html").read_text(encoding="utf-8")
    row = next(r for r in summary["quality"]["checks"] if r["check"] == "folding_percent")
    assert row["verdict"] == "WARN" and 0.001 < row["value"] < 0.005
    text = _text(page)
    shown = re.search(r"folding: body voxels with det J ≤ 0 \(%\) (\S+) (PASS ≤ [^W]*, WARN ≤ \S+, FAIL > \S+) (\w+)",
                      text)
    assert shown, text[:2000]
    value, tolerance, verdict = shown.groups()
    assert tolerance == "PASS ≤ 0, WARN ≤ 0.01, FAIL > 0.01" and verdict == "WARN"
    assert 0.0 < float(value) <= 0.01 and value == value_text(row) and value != "0.00"
    assert "0.00 " not in text.replace("0.00 %", "")  # no value or limit rounded to zero anywhere


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_folding_row_as_chromium_renders_it(speck, tmp_path):
    d, summary, _ = speck
    dom = run_process([CHROMIUM, *FLAGS, "--user-data-dir=" + str(tmp_path / "profile"), "--dump-dom",
                          (d / "report.html").as_uri()], capture_output=True, text=True, encoding="utf-8",
                         errors="replace", check=True).stdout
    row = next(r for r in summary["quality"]["checks"] if r["check"] == "folding_percent")
    assert re.search(rf"{re.escape(value_text(row))}\s*</td>\s*<td[^>]*>PASS ≤ 0, WARN ≤ 0.01, FAIL &gt; 0.01</td>"
                     rf'\s*<td><span[^>]*data-verdict="WARN"', dom)


def test_the_page_locates_the_folds_and_marks_them(speck):
    from matplotlib.image import imread

    d, summary, worst_lps = speck
    q = summary["quality"]
    page = (d / "report.html").read_text(encoding="utf-8")
    assert len(q["folding_clusters"]) == 1 and q["folding_clusters"][0]["voxels"] == 3
    assert q["folding_clusters"][0]["worst_lps"] == [round(float(v), 1) for v in worst_lps]
    assert "Where the field folds" in page
    assert ", ".join(f"{v:.1f}" for v in q["folding_clusters"][0]["worst_lps"]) in _text(page)
    pictures = _images(page)
    assert len(pictures) == 3  # review, doubt maps, the folds (no landmarks: no TRE histogram)
    folds = imread(io.BytesIO(pictures[0]))[..., :3]  # the page's order: the folds' figure first
    red = (folds[..., 0] > 0.85) & (folds[..., 1] < 0.25) & (folds[..., 2] < 0.25)
    assert red.sum() > 20  # the red circles around the folding voxels


def test_without_landmarks_the_page_says_accuracy_not_verified(speck):
    d, summary, _ = speck
    q = summary["quality"]
    page = (d / "report.html").read_text(encoding="utf-8")
    assert q["overall"] in (UNVERIFIED, "FAIL") and not q["accuracy_verified"]
    if q["overall"] == UNVERIFIED:
        assert re.search(r'data-verdict="UNVERIFIED"[^>]*>UNVERIFIED</span> accuracy not verified', page)
    assert "landmark TRE: no landmark pairs were given" in page and "Not measured" in page


def test_the_page_names_its_inputs_command_and_model(speck):
    d, summary, _ = speck
    page = (d / "report.html").read_text(encoding="utf-8")
    for name in ("fixed.nrrd", "moving.nrrd", "fixed.mrk.json", "moving.mrk.json"):
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() in page, name
    assert summary["inputs"]["fixed_landmarks"]["sha256"] == hashlib.sha256((d / "fixed.mrk.json").read_bytes()).hexdigest()
    assert html.escape(f"progreg register {d / 'fixed.nrrd'} {d / 'moving.nrrd'} --out 'o u t'") in page
    assert summary["provenance"]["model"]["meta"] == {"iterations": 0, "arm": "test"} and "arm test" in page
    assert "not DICOM" in page


def test_image_info_of_a_dicom_series_names_its_uids_and_hashes_its_files(tmp_path):
    folder = tmp_path / "ct"
    write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.777", "T00", n=4, patient="PAT-7",
                       extra=(("0020|000d", "1.2.826.0.1.3680043.2.1125.776"),))
    image = sitk.ReadImage([str(f) for f in sorted(folder.iterdir())])
    info = image_info(folder, image)
    files = sorted(folder.iterdir(), key=str)
    assert info["sha256"] == hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert info["dicom"]["series_uid"] == "1.2.826.0.1.3680043.2.1125.777"
    assert info["dicom"]["study_uid"] == "1.2.826.0.1.3680043.2.1125.776" and info["dicom"]["patient_id"] == "PAT-7"
    assert "4 files" in info["sha256_of"]
    # A folder of two series, the one meant given by its UID.
    write_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.778", "T50", n=4, patient="PAT-7")
    assert image_info(folder, image, "1.2.826.0.1.3680043.2.1125.778")["dicom"]["series_uid"].endswith(".778")
    assert image_info(tmp_path / "absent.nrrd", image)["sha256"] is None
