"""``report.html``: a registration's quality report, for the person who must sign it.

One self-contained page (figures embedded as PNG data, no script, no request to anywhere),
readable offline and printable to PDF: what was registered, the AAPM TG-132 check table
(value, tolerance, PASS / WARN / FAIL; :mod:`quality`), the visual review on three planes,
the TRE histogram with the worst landmarks, and the distribution of the doubt maps. Every
number on the page is read from the summary (``summary.json``) so that the two agree.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..core.atomic import concurrent, write_text
from ..io.images import write_image
from .figures import phases_figure, quality_histogram, review_figure, tre_histogram
from .quality import Tolerance, contour_agreement, quality_maps, quality_summary

VERDICT_COLOURS = {"PASS": "#1b7f3b", "WARN": "#b36b00", "FAIL": "#b00020", "n/a": "#666666"}

STYLE = """
body { font: 13px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 8px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #e4e4e4;
       text-align: left; vertical-align: top; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 700; color: #fff; padding: 1px 8px; border-radius: 3px; }
.overall { font-size: 15px; padding: 3px 12px; }
img { max-width: 100%; } .muted { color: #666; } .sign td { height: 34px; min-width: 260px; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr, img, figure { break-inside: avoid; }
               @page { size: A4 landscape; margin: 12mm; } }
"""


def fmt(value, digits: int = 2) -> str:
    """A number as the page shows it (and as the tests read it back)."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def badge(verdict: str, extra: str = "") -> str:
    return (f'<span class="verdict {extra}" data-verdict="{verdict}" '
            f'style="background:{VERDICT_COLOURS.get(verdict, "#666")}">{verdict}</span>')


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(rows_cell) + "</tr>" for rows_cell in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cell(text: str, num: bool = False, attrs: str = "") -> str:
    return f'<td{" class=num" if num else ""}{attrs}>{text}</td>'


def _tolerance(row: dict) -> str:
    op = "≥" if row["higher_is_better"] else "≤"
    return f"PASS {op} {fmt(row['warn'])}, WARN {op} {fmt(row['fail'])}"


def check_table(quality: dict) -> str:
    rows = []
    for r in quality["checks"]:
        rows.append([cell(html.escape(r["label"])),
                     cell(fmt(r["value"]), True, f' data-check="{html.escape(r["check"])}"'),
                     cell(_tolerance(r)), cell(badge(r["verdict"])), cell(html.escape(r["source"]), attrs=' class=muted')])
    return table(["check", "value", "tolerance", "verdict", "tolerance from"], rows, "checks")


def _inputs_table(summary: dict) -> str:
    rows = []
    for role in ("fixed", "moving"):
        info = summary.get("inputs", {}).get(role)
        if not info:
            continue
        rows.append([cell(role), cell(html.escape(str(info.get("path", "")))),
                     cell(" × ".join(map(str, info["size"]))), cell(" × ".join(fmt(s, 3) for s in info["spacing_mm"])),
                     cell(html.escape(info.get("orientation", "")))])
    return table(["image", "file", "voxels", "spacing (mm)", "storage axes"], rows)


def _settings(summary: dict) -> list[list[str]]:
    refinement = summary.get("refinement")
    levels = refinement["levels"] if refinement else None
    refined = ("off (network alone)" if not levels else
               ", ".join(f"{'×'.join(fmt(s, 2) for s in lv['spacing_mm'])} mm: {lv['iterations']} it." for lv in levels))
    seconds = summary.get("seconds", {})
    total = sum(v for k, v in seconds.items() if k != "write")
    grid = summary.get("grid", {})
    rows = [("model", html.escape(str(summary.get("model", "")))), ("device", summary.get("device", "")),
            ("network grid", f"{grid.get('network_size', '')}³"),
            ("transform grid", " × ".join(map(str, grid.get("transform_size", []))) + " voxels of "
             + " × ".join(fmt(s, 3) for s in grid.get("transform_spacing_mm", [])) + " mm"),
            ("refinement", refined), ("registration time", f"{total:.1f} s"),
            ("tolerances", html.escape(summary["quality"].get("tolerances_file")
                                       or "defaults (AAPM TG-132 where it gives a value)")),
            ("software", f"ProgressiveRegistration {__version__}"),
            ("report made", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))]
    return [[cell(k), cell(str(v))] for k, v in rows]


def worst_landmarks(labels: list[str], landmarks: dict, n: int = 10) -> str:
    after = landmarks["after_mm"]
    used = landmarks["used"]
    order = [i for i in np.argsort(-np.where(used, after, -np.inf)) if used[i]][:n]
    rows = [[cell(html.escape(labels[i] if i < len(labels) else str(i + 1))), cell(fmt(landmarks["before_mm"][i]), True),
             cell(fmt(landmarks["network_mm"][i]), True), cell(fmt(after[i]), True),
             cell(" ".join(fmt(v, 1) for v in landmarks["fixed_lps"][i]))] for i in order]
    return table(["landmark", "before (mm)", "network (mm)", "after (mm)", "fixed position (LPS mm)"], rows)


def registration_page(summary: dict, figures: dict[str, bytes], landmark_labels: list[str] | None = None,
                      landmarks: dict | None = None, title: str = "Registration quality report") -> str:
    """The page: ``summary`` with its ``quality`` section, ``figures`` by name (``review``,
    ``tre``, ``quality``) as PNG bytes, and the landmark pairs for the worst-landmark list."""
    q = summary["quality"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p>Overall: {badge(q["overall"], "overall")} '
             f'<span class="muted">({sum(r["verdict"] == "PASS" for r in q["checks"])} of {len(q["checks"])} checks '
             "pass; a WARN or FAIL needs a reviewer's judgement before the result is used)</span></p>",
             "<h2>What was registered</h2>", _inputs_table(summary), table(["setting", ""], _settings(summary)),
             "<h2>Checks (AAPM TG-132)</h2>", check_table(q)]
    if summary.get("warnings"):
        parts.append("<p><b>Notes:</b></p><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in summary["warnings"])
                     + "</ul>")
    if "review" in figures:
        parts += ["<h2>Visual review</h2>",
                  "<p class=muted>Three planes through the lungs. Checkerboards alternate fixed and moving (before) or "
                  "warped moving (after) squares of ~16 mm: edges continue across squares where the images agree. "
                  "|ΔHU| is the absolute difference. det J &lt; 1 is local compression, &gt; 1 expansion; red marks "
                  "folding (det J ≤ 0). The doubt map is 1 − local NCC of fixed and warped moving (quality.nrrd).</p>",
                  f"<figure>{img(figures['review'], 'visual review on three planes')}</figure>"]
    if landmarks is not None and "tre" in figures:
        m = q["measured"].get("tre_mm", {})
        parts += ["<h2>Landmarks</h2>",
                  f"<p>{fmt(m.get('n'))} pairs used; TRE after: mean {fmt(m.get('mean'))} mm, "
                  f"95th percentile {fmt(m.get('p95'))} mm, maximum {fmt(m.get('max'))} mm.</p>",
                  f"<figure>{img(figures['tre'], 'TRE histogram')}</figure>",
                  "<p>The worst landmarks after registration:</p>", worst_landmarks(landmark_labels or [], landmarks)]
    if "quality" in figures:
        ic = q["measured"]["inverse_consistency_mm"]
        parts += ["<h2>Where not to trust the field</h2>",
                  f"<p>Doubt (1 − local NCC, {2 * q['ncc_radius_vox'] + 1}³ voxels) in the lungs: mean "
                  f"{fmt(q['measured']['residual_in_lungs']['mean'])}, 95th percentile "
                  f"{fmt(q['measured']['residual_in_lungs']['p95'])}. Inverse consistency through the fixed-point "
                  f"inverse in the lungs: mean {fmt(ic['mean'])} mm, maximum {fmt(ic['max'])} mm "
                  "(inverse_consistency.nrrd).</p>", f"<figure>{img(figures['quality'], 'quality distributions')}</figure>"]
    parts += ["<h2>Review</h2>", table(["", ""], [[cell("reviewed by"), cell("")], [cell("date"), cell("")],
                                                   [cell("decision"), cell("")]], "sign")]
    return page(title, "\n".join(parts))


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(path, page: str) -> None:
    write_text(path, page)


def fourd_page(summary: dict, phase_rows: list[dict], figure: bytes | None, phase_links: dict[int, str]) -> str:
    """The 4DCT page: one row per phase with its checks' verdicts, the phases figure (lung
    volume curve, trajectories, ventilation), and links to each phase's own report."""
    rows = []
    for r in phase_rows:
        k = r["phase"]
        link = f'<a href="{html.escape(phase_links[k])}">report</a>' if k in phase_links else "reference"
        rows.append([cell(str(k)), cell(html.escape(str(r.get("name", "")))),
                     cell(fmt(r.get("volume_change_percent")), True), cell(fmt(r.get("mean_displacement_mm")), True),
                     cell(fmt(r.get("folding_percent"), 3), True), cell(fmt(r.get("jacobian_min")), True),
                     cell(fmt(r.get("inverse_consistency_mean_mm"), 3), True),
                     cell(badge(r["verdict"]) if r.get("verdict") else "–"), cell(link)])
    parts = ["<h1>4DCT registration quality report</h1>",
             f"<p>{len(phase_rows)} phases registered to phase {summary['reference']} "
             f"({html.escape(str(summary.get('order', '')))}).</p>",
             table(["phase", "name", "lung volume change (%)", "mean displacement (mm)", "folding (%)", "det J min",
                     "inverse consistency mean (mm)", "verdict", ""], rows)]
    if figure is not None:
        parts.append(f"<figure>{img(figure, 'phases: ventilation, lung volume and trajectories')}</figure>")
    return page("4DCT registration quality report", "\n".join(parts))


# --- the reports' files -------------------------------------------------------------------

def image_info(path, image) -> dict:
    """What the report says of an input image: its file, voxels, spacing and storage axes."""
    return {"path": str(path), "size": list(image.GetSize()), "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
            "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())}


def report_figures(result, maps) -> dict[str, bytes]:
    """The report's pictures (PNG bytes): the visual review, the TRE histogram, the doubt maps."""
    figures = {"review": review_figure(result, maps), "quality": quality_histogram(maps)}
    if result.landmarks is not None:
        lm, used = result.landmarks, result.landmarks["used"]
        figures["tre"] = tre_histogram(lm["before_mm"][used], lm["network_mm"][used], lm["after_mm"][used],
                                       result.refinement is not None)
    return figures


def report_writers(result, summary: dict, fixed, moving, landmark_labels: list[str], tolerances: dict[str, Tolerance],
                   tolerances_file=None, contours=None, title: str = "Registration quality report") -> dict:
    """Measure the checks into ``summary["quality"]`` now; return the writers of ``report.html``,
    ``quality.nrrd`` (1 − local NCC) and ``inverse_consistency.nrrd`` (mm). ``contours``:
    (fixed label map, moving label map carried onto the fixed grid), or None."""
    maps = quality_maps(result, fixed, moving)
    agreement = contour_agreement(*contours) if contours is not None else None
    summary["quality"] = quality_summary(result, maps, tolerances, agreement,
                                         str(tolerances_file) if tolerances_file else None)
    return {"quality.nrrd": concurrent(lambda p: write_image(maps.residual_image(), p)),
            "inverse_consistency.nrrd": concurrent(lambda p: write_image(maps.inverse_error_image(), p)),
            "report.html": lambda p: write_report(p, registration_page(summary, report_figures(result, maps),
                                                                     landmark_labels, result.landmarks, title))}


def fourd_report_writers(fourd, summary: dict, images: list, names: list[str], tolerances: dict[str, Tolerance],
                         tolerances_file=None) -> dict:
    """``report.html`` for a 4DCT (a row per phase, the phases figure, links) and, per phase,
    ``phase_<k>/report.html`` with its quality maps. Each phase's checks go into its summary."""
    writers: dict = {}
    rows, links = [], {}
    reference_image = images[fourd.reference]
    for phase in fourd.phases:
        row = phase.row()
        if phase.result is not None:
            out = phase.result.out_grid
            phase_summary = {"inputs": {"fixed": image_info(names[fourd.reference], reference_image),
                                        "moving": image_info(names[phase.index], images[phase.index])},
                             "model": summary.get("model"), "device": summary.get("device"),
                             "refinement": {"levels": phase.result.refinement} if phase.result.refinement else None,
                             "seconds": dict(phase.result.seconds), "warnings": phase.result.warnings,
                             "grid": {"network_size": phase.result.fixed_crop.size[0],
                                      "transform_size": list(out.size), "transform_spacing_mm": list(out.spacing_mm)}}
            for name, write in report_writers(phase.result, phase_summary, reference_image, images[phase.index], [],
                                              tolerances, tolerances_file,
                                              title=f"Phase {phase.index} ({names[phase.index]}) to phase "
                                                    f"{fourd.reference}: registration quality report").items():
                writers[f"phase_{phase.index}/{name}"] = write
            q = phase_summary["quality"]
            row.update({"verdict": q["overall"], "jacobian_min": q["measured"]["jacobian_min"],
                        "inverse_consistency_mean_mm": q["measured"]["inverse_consistency_mm"]["mean"]})
            summary.setdefault("quality", {})[str(phase.index)] = {"overall": q["overall"], "checks": q["checks"]}
            links[phase.index] = f"phase_{phase.index}/report.html"
        rows.append(row)

    writers["report.html"] = lambda p: write_report(p, fourd_page(summary, rows, _phases_png(fourd, reference_image),
                                                                  links))
    return writers


def _phases_png(fourd, reference_image) -> bytes:
    """The phases figure as PNG bytes (drawn into a temporary file: the figure writes files)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phases.png"
        phases_figure(fourd, reference_image, path)
        return path.read_bytes()
