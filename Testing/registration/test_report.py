"""report.html in a real browser: headless Chromium renders it to PNG and PDF; no image is
broken or blank, nothing is fetched from anywhere, and the numbers on the page are
summary.json's."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE, progreg

from ProgressiveRegistrationLib.io.landmarks import write_markups_json
from ProgressiveRegistrationLib.registration.report import fmt
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
    assert {"tre_mean_mm", "tre_p95_mm", "tre_max_mm", "jacobian_min", "folding_percent",
            "lung_jacobian_outside_percent", "inverse_consistency_mean_mm", "lung_ncc_after", "dice[2]",
            "mean_surface_distance_mm[2]", "hd95_mm[2]"} <= names
    cells = dict(re.findall(r'<td class=num data-check="([^"]+)">([^<]*)</td>', page))
    assert {html.unescape(k): v for k, v in cells.items()} == {r["check"]: fmt(r["value"]) for r in checks}
    verdicts = re.findall(r'data-verdict="(PASS|WARN|FAIL|n/a)"', page)
    assert verdicts[0] == summary["quality"]["overall"] and verdicts[1:] == [r["verdict"] for r in checks]
    # The inputs as registered, and the TRE as summary.json has it.
    assert "fixed.nrrd" in page and "57 × 78 × 64" in page and "LPS" in page
    assert f"mean {fmt(summary['quality']['measured']['tre_mm']['mean'])} mm" in page
    assert summary["quality"]["measured"]["tre_mm"]["mean"] == pytest.approx(summary["tre_after_mm"]["mean"])


def test_the_report_is_self_contained(registered):
    page = (registered[1] / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert "<script" not in page and "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # and the page forbids any fetch should one slip in
    from matplotlib.image import imread

    pictures = _images(page)
    assert len(pictures) == 3  # visual review, TRE histogram, doubt maps
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
    subprocess.run([CHROMIUM, *FLAGS, *profile, f"--screenshot={png}", "--window-size=1200,2600", url],
                   capture_output=True, timeout=120, check=True)
    subprocess.run([CHROMIUM, *FLAGS, *profile, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", url],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=120, check=True).stdout
    pixels = imread(png)
    assert pixels.shape[:2] == (2600, 1200) and pixels[..., :3].std() > 0.1  # not a blank page
    # The verdict badges are drawn in their colours (green PASS at least once).
    assert np.any(np.all(np.abs(pixels[..., :3] - np.array([0x1b, 0x7f, 0x3b]) / 255) < 0.02, axis=-1))
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000
    assert len(re.findall(r"<img ", dom)) == 3 and "data-verdict" in dom


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
    verdicts = re.findall(r'data-verdict="(PASS|WARN|FAIL)"', page)
    assert verdicts == [summary["quality"][k]["overall"] for k in ("1", "2")]
    phase_page = (out / "phase_1" / "report.html").read_text(encoding="utf-8")
    cells = dict(re.findall(r'<td class=num data-check="([^"]+)">([^<]*)</td>', phase_page))
    assert cells == {c["check"]: fmt(c["value"]) for c in summary["quality"]["1"]["checks"]}
    assert len(_images(page)) == 1 and (out / "phase_2" / "quality.nrrd").is_file()
    q = sitk.ReadImage(str(out / "phase_1" / "quality.nrrd"))
    assert q.GetSize() == tuple(summary["grid"]["transform_size"])
