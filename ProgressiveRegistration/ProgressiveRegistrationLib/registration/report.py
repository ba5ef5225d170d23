"""``report.html``: a registration's quality report, for the person who must sign it.

One self-contained page (figures embedded as PNG data, no script, no request to anywhere),
readable offline and printable to PDF: the overall verdict and why; what was registered,
from which files (SHA-256, DICOM UIDs), by which command, software and model; what was
checked and what was not; the check table (value, tolerance, PASS / WARN / FAIL, the share
of landmarks or voxels beyond it, the outliers by name; which tolerances are AAPM TG-132's);
where the field folds; the information rows outside the verdict; the visual review on three
planes; the landmarks; the doubt maps; and a block to sign. Every number on the page is read
from the summary (``summary.json``) so that the two agree.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import math
import platform
import re
import shlex
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .. import __version__
from ..core.atomic import concurrent, write_text
from ..io.images import list_dicom_series, write_image
from .figures import folding_figure, phases_figure, quality_histogram, review_figure, tre_histogram
from .quality import contour_agreement, landmark_names, quality_maps, quality_summary
from .tolerances import (
    DEFAULT_TOLERANCES,
    TG132,
    TG132_BASIS,
    UNVERIFIED,
    Tolerance,
    format_number,
    share_text,
    tolerance_text,
    value_text,
)

VERDICT_COLOURS = {"PASS": "#1b7f3b", "WARN": "#b36b00", "FAIL": "#b00020", UNVERIFIED: "#4a5a8a", "n/a": "#666666"}

#: What the overall verdict means, after its badge.
OVERALL_MEANING = {
    "PASS": "every check is within its tolerance; the result still needs the reviewer's signature below.",
    "WARN": "usable after review: the items below need a reviewer's look before the result is used.",
    "FAIL": "this registration cannot be used as it is.",
    UNVERIFIED: "accuracy not verified: no landmark pairs or contours measured it. The checks below show only "
                "that the field is plausible and that the lungs agree better than before registration.",
}

SHORT_MEANING = {"PASS": "within every tolerance", "WARN": "usable after review", "FAIL": "cannot be used as it is",
                 UNVERIFIED: "accuracy not verified: no landmark pairs or contours measured it"}

RESEARCH_NOTICE = ("Research software, not a medical device: not cleared or approved for clinical use. Its results "
                   "must be reviewed by a qualified person before any use, and remain that person's responsibility.")

STYLE = """
body { font: 13px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 8px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #e4e4e4;
       text-align: left; vertical-align: top; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-weight: 700; color: #fff; padding: 1px 8px; border-radius: 3px; white-space: nowrap; }
.overall { font-size: 15px; padding: 3px 12px; }
.notice { border: 1px solid #b36b00; background: #fff7e6; padding: 6px 10px; margin: 8px 0; }
.hash, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11px; word-break: break-all; }
.info td { color: #444; } .small { font-size: 12px; }
img { max-width: 100%; cursor: zoom-in; } .muted { color: #666; } .sign td { height: 34px; min-width: 260px; }
.sign td:first-child { min-width: 120px; } .sign td + td { border-bottom: 1px solid #555; }
.zoom input { display: none; }
.zoom input:checked + img { position: fixed; inset: 0; width: 100vw; height: 100vh; max-width: none; object-fit: contain;
                            background: rgba(255, 255, 255, 0.97); z-index: 10; cursor: zoom-out; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr, img, figure { break-inside: avoid; }
               @page { size: A4 landscape; margin: 12mm; } }
"""


def fmt(value, digits: int = 2) -> str:
    """A number with ``digits`` decimals (for measurements; the checks' values use
    :func:`quality.value_text`, whose digits always agree with their tolerance)."""
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
    """A picture in the page. A click enlarges it to the window, a click on it puts it back: a
    label's hidden checkbox, in CSS alone (the page runs no script)."""
    return (f'<label class="zoom"><input type="checkbox"><img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></label>')


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; no header row when every heading is empty."""
    head = f'<thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead>' if any(header) else ""
    body = "".join("<tr>" + "".join(rows_cell) + "</tr>" for rows_cell in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def cell(text: str, num: bool = False, attrs: str = "") -> str:
    return f'<td{" class=num" if num else ""}{attrs}>{text}</td>'


# --- provenance ---------------------------------------------------------------------------

_DICOM_TAGS = {"patient_id": "0010|0020", "study_uid": "0020|000d", "series_uid": "0020|000e",
               "frame_of_reference_uid": "0020|0052", "series_description": "0008|103e", "study_date": "0008|0020"}


def _sha256(paths: list[Path]) -> str:
    """SHA-256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _detached_data(path: Path) -> Path | None:
    """The data file a ``.mhd`` or ``.nhdr`` header names (None when the data are inside it)."""
    if path.suffix.lower() not in (".mhd", ".nhdr"):
        return None
    pattern = r"^\s*ElementDataFile\s*=\s*(.+?)\s*$" if path.suffix.lower() == ".mhd" else \
        r"^\s*data ?file\s*:\s*(.+?)\s*$"
    try:
        text = path.read_text(encoding="latin-1", errors="replace")
    except OSError:
        return None
    m = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
    if not m or m.group(1).upper() in ("LOCAL", "LIST") or " " in m.group(1):
        return None
    data = path.parent / m.group(1)
    return data if data.is_file() else None


def file_info(path) -> dict:
    """A file the run read (landmarks, segmentation, tolerances, model): its path, size and
    SHA-256; for a folder, the SHA-256 of its files' bytes in sorted path order."""
    p = Path(str(path))
    if p.is_file():
        return {"path": str(path), "bytes": p.stat().st_size, "sha256": _sha256([p])}
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file()), key=str)
        return {"path": str(path), "files": len(files), "sha256": _sha256(files),
                "sha256_of": f"the folder's {len(files)} files, in sorted path order"}
    return {"path": str(path), "sha256": None, "sha256_of": "not a file on this computer"}


def _dicom_tags(read) -> dict:
    return {key: read(tag).strip() for key, tag in _DICOM_TAGS.items() if read(tag) is not None}


def image_info(path, image, series: str | None = None) -> dict:
    """What the report says of an input image: its file, voxels, spacing and storage axes, the
    SHA-256 of what was read (a file; a ``.mhd``/``.nhdr`` header and its data file; a DICOM
    series' files in sorted path order) and, for DICOM, the patient ID and the study, series
    and frame-of-reference UIDs. ``series``: the UID chosen in a folder of several series."""
    info = _geometry(path, image)
    p = Path(str(path))
    try:
        if p.is_dir():
            info.update(_dicom_folder(p, image, series))
        elif p.is_file():
            data = _detached_data(p)
            info["sha256"] = _sha256([p])
            info["sha256_of"] = "the file"
            if data is not None:
                info.update({"data_file": str(data), "data_sha256": _sha256([data])})
            tags = _dicom_tags(lambda t: image.GetMetaData(t) if image.HasMetaDataKey(t) else None)
            if tags:
                info["dicom"] = tags
        else:
            info.update({"sha256": None, "sha256_of": "not a file on this computer (a name, not a path)"})
    except OSError as err:
        info.update({"sha256": None, "sha256_of": f"could not be read ({err.strerror or type(err).__name__})"})
    return info


def _geometry(path, image) -> dict:
    return {"path": str(path), "size": list(image.GetSize()), "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
            "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())}


def _dicom_folder(folder: Path, image, series: str | None) -> dict:
    """The DICOM series of ``folder`` that gave ``image``: its files' SHA-256 and its UIDs."""
    found = list_dicom_series(folder)
    if series is not None:
        found = [s for s in found if s.uid == series] or [s for s in found if s.uid.startswith(series)]
    if len(found) > 1:  # the one whose slices make the image
        found = [s for s in found if len(s.files) == image.GetSize()[2]] or found
    if len(found) != 1:
        return {"sha256": None, "sha256_of": "the DICOM series could not be told apart in the folder",
                "dicom": {"series_uids": [s.uid for s in found]}}
    s = found[0]
    files = sorted((Path(f) for f in s.files), key=str)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    tags: dict = {}
    try:
        reader.ReadImageInformation()
        tags = _dicom_tags(lambda t: reader.GetMetaData(t) if reader.HasMetaDataKey(t) else None)
    except RuntimeError:
        pass
    tags["series_uid"] = s.uid
    return {"sha256": _sha256(files), "sha256_of": f"the series' {len(files)} files, in sorted path order",
            "dicom": tags}


#: The inputs that are files but not images, in the order the page lists them.
FILE_INPUTS = ("fixed_landmarks", "moving_landmarks", "fixed_segmentation", "moving_segmentation", "fixed_mask",
               "moving_mask", "initial_transform", "points", "segmentation", "tolerances")


def add_provenance(summary: dict, tolerances_file=None) -> dict:
    """``summary["provenance"]``: the software, the model (path, SHA-256, its metadata), the
    command line (``summary["command_line"]``: a list of arguments or a string; absent:
    "not recorded"), and the files in ``summary["inputs"]`` that are given as bare paths
    turned into :func:`file_info` records (the tolerance file added)."""
    inputs = summary.setdefault("inputs", {})
    if tolerances_file and "tolerances" not in inputs:
        inputs["tolerances"] = str(tolerances_file)
    for key in FILE_INPUTS:
        if isinstance(inputs.get(key), (str, Path)):
            inputs[key] = file_info(inputs[key])
    model = summary.get("model")
    provenance = {"software": f"ProgressiveRegistration {__version__}",
                  "runtime": f"Python {platform.python_version()}, torch {torch.__version__}, "
                             f"SimpleITK {sitk.Version.VersionString()}, {platform.system()} {platform.machine()}",
                  "command_line": _command_line(summary.get("command_line")),
                  "model": {**(file_info(model) if model else {"path": None, "sha256": None}),
                            "meta": summary.get("model_meta") or {}}}
    summary["provenance"] = provenance
    return provenance


def _command_line(argv) -> str | None:
    if argv is None:
        return None
    return argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)


def _hash_cell(info: dict) -> str:
    if not info.get("sha256"):
        return cell(f'<span class=muted>{html.escape(info.get("sha256_of") or "not recorded")}</span>')
    text = f'<span class=hash>{info["sha256"]}</span>'
    if info.get("sha256_of") and info["sha256_of"] != "the file":
        text += f'<br><span class="muted small">of {html.escape(info["sha256_of"])}</span>'
    if info.get("data_sha256"):
        text += (f'<br><span class="muted small">data file {html.escape(Path(info["data_file"]).name)}:</span> '
                 f'<span class=hash>{info["data_sha256"]}</span>')
    return cell(text)


def _dicom_text(info: dict) -> str:
    d = info.get("dicom")
    if not d:
        return '<span class=muted>not DICOM (no UIDs in the file)</span>'
    names = {"patient_id": "patient ID", "study_uid": "study", "series_uid": "series",
             "frame_of_reference_uid": "frame of reference", "series_description": "description",
             "study_date": "study date", "series_uids": "series in the folder"}
    return "<br>".join(f'{names.get(k, k)}: <span class=mono>{html.escape(", ".join(v) if isinstance(v, list) else v)}'
                       "</span>" for k, v in d.items() if v)


def _inputs_table(summary: dict) -> str:
    rows = []
    inputs = summary.get("inputs", {})
    images = [(role, inputs.get(role)) for role in ("fixed", "moving")]
    images += [(f"phase {k}", info) for k, info in enumerate(inputs.get("phases") or [])]
    for role, info in images:
        if not info:
            continue
        rows.append([cell(html.escape(role)), cell(html.escape(str(info.get("path", "")))), _hash_cell(info),
                     cell(" × ".join(map(str, info["size"])) + " voxels<br>"
                          + " × ".join(fmt(s, 3) for s in info["spacing_mm"]) + " mm, "
                          + html.escape(info.get("orientation", ""))),
                     cell(_dicom_text(info), attrs=' class=small')])
    out = table(["image", "file", "SHA-256", "voxels, spacing, storage axes", "DICOM"], rows)
    files = [[cell(html.escape(key.replace("_", " "))), cell(html.escape(str(inputs[key].get("path", "")))),
              _hash_cell(inputs[key])] for key in FILE_INPUTS if isinstance(inputs.get(key), dict)]
    if files:
        out += table(["other input", "file", "SHA-256"], files)
    return out


def _settings(summary: dict) -> list[list[str]]:
    refinement = summary.get("refinement")
    levels = refinement.get("levels") if refinement else None
    refined = ("off (network alone)" if not refinement else
               ", ".join(f"{'×'.join(fmt(s, 2) for s in lv['spacing_mm'])} mm: {lv['iterations']} it." for lv in levels)
               if levels else ", ".join(f"{mm:g} mm (nominal): {n} it." for mm, n in
                                        zip(refinement.get("levels_mm", []), refinement.get("iterations", []))))
    seconds = summary.get("seconds", {})
    total = sum(v for k, v in seconds.items() if k not in ("write", "quality") and isinstance(v, (int, float)))
    grid = summary.get("grid", {})
    rows = [("device", html.escape(str(summary.get("device", "")))),
            ("network grid", f"{grid['network_size']}³" if grid.get("network_size") else "–"),
            ("transform grid", " × ".join(map(str, grid.get("transform_size", []))) + " voxels of "
             + " × ".join(fmt(s, 3) for s in grid.get("transform_spacing_mm", [])) + " mm"),
            ("refinement", refined), ("registration time", f"{total:.1f} s"),
            ("tolerances", html.escape((summary.get("quality") or {}).get("tolerances_file")
                                       or "defaults (AAPM TG-132's where it gives a value, the project's elsewhere)")),
            ("report made", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))]
    return [[cell(k), cell(str(v))] for k, v in rows]


def _provenance_table(summary: dict) -> str:
    p = summary.get("provenance") or add_provenance(summary)
    model = p["model"]
    meta = ", ".join(f"{k} {v}" for k, v in (model.get("meta") or {}).items() if v is not None)
    command = p.get("command_line")
    rows = [[cell("command line"), cell(f'<span class=mono>{html.escape(command)}</span>' if command else
                                        '<span class=muted>not recorded (run from Python or Slicer, not from '
                                        'the command line)</span>')],
            [cell("software"), cell(html.escape(p["software"]) + f'<br><span class="muted small">'
                                    f'{html.escape(p.get("runtime", ""))}</span>')],
            [cell("model"), cell(html.escape(str(model.get("path"))) + (f" ({html.escape(meta)})" if meta else "")
                                 + "<br>" + (f'SHA-256 <span class=hash>{model["sha256"]}</span>' if model.get("sha256")
                                             else '<span class=muted>SHA-256 not recorded</span>'))]]
    return table(["", ""], rows + _settings(summary))


def _sign_block() -> str:
    return ("<h2>Review and signature</h2><p class=muted>The reviewer's decision on this result (for example: "
            "use / use with the restrictions noted / do not use), with name, date and signature.</p>"
            + table(["", ""], [[cell("reviewer (name)"), cell("")], [cell("date"), cell("")],
                               [cell("decision and restrictions"), cell("")], [cell("signature"), cell("")]], "sign"))


# --- the registration's page --------------------------------------------------------------

def _beyond_cell(row: dict) -> str:
    parts = [html.escape(share_text(s)) for s in row.get("shares", [])]
    if row.get("outliers"):
        parts.append("<b>outliers:</b> landmark " + html.escape(landmark_names(row["outliers"], 10)))
    if row.get("clusters"):
        parts.append(f"{len(row['clusters'])} cluster(s) listed under “Where the field folds”")
    if "before" in row and "after" in row:
        parts.append(f"NCC {format_number(row['before'])} before → {format_number(row['after'])} after")
    if row.get("note") and (row["verdict"] != "PASS" or row.get("already_agreed")):
        parts.append(f'<span class=muted>{html.escape(row["note"])}</span>')
    return cell("<br>".join(parts) or '<span class=muted>–</span>', attrs=' class=small')


def check_table(quality: dict) -> str:
    rows = []
    for r in quality["checks"]:
        rows.append([cell(html.escape(r["label"])),
                     cell(value_text(r), True, f' data-check="{html.escape(r["check"])}"'),
                     cell(html.escape(tolerance_text(r)), attrs=' class=small'), cell(badge(r["verdict"])),
                     _beyond_cell(r), cell(html.escape(r["source"]), attrs=' class="muted small"')])
    return table(["check", "value", "tolerance", "verdict", "beyond the tolerance", "tolerance from"], rows, "checks")


def _tolerance_legend(quality: dict) -> str:
    names = sorted({r["check"].split("[")[0] for r in quality["checks"]} & set(TG132_BASIS),
                   key=list(TG132_BASIS).index)
    items = "".join(f"<li>{html.escape(TG132_BASIS[n])}</li>" for n in names if DEFAULT_TOLERANCES[n].tg132)
    return (f'<p class="small">Tolerances from <b>{TG132}</b> (Brock et al., Med. Phys. 44, 2017), where the "from" '
            f"column names it:</p><ul class=small>{items}</ul><p class=\"small\">Every other number is the "
            "<b>project's own</b> choice (docs/CONVENTIONS.md, “Registration quality”). A check whose tolerance reads "
            "“else WARN” can warn but never fails. FAIL: the registration as a whole cannot be used; WARN: it needs "
            "the reviewer's look (outliers are named, folds located).</p>")


def information_table(quality: dict) -> str:
    rows, previous = [], None
    for r in quality.get("information", []):
        note = r.get("note", "")
        rows.append([cell(html.escape(r["label"])),
                     cell(format_number(r["value"]), True, f' data-info="{html.escape(r["check"])}"'),
                     cell(html.escape(note if note != previous else "(as above)"), attrs=' class="muted small"')])
        previous = note or None
    return table(["measured", "value", "note"], rows, "info")


def _lps_text(point) -> str:
    return ", ".join(f"{float(v):.1f}" for v in point)


def _folding_section(quality: dict, figures: dict) -> list[str]:
    clusters = quality.get("folding_clusters") or []
    if not clusters:
        return []
    m = quality["measured"]
    rows = [[cell(str(n + 1)), cell(str(c["voxels"]), True), cell(format_number(c["volume_mm3"]), True),
             cell(_lps_text(c["centre_lps"])), cell(_lps_text(c["worst_lps"])), cell(format_number(c["worst_det_j"]), True),
             cell(str(c["in_lungs"]), True)] for n, c in enumerate(clusters)]
    parts = ["<h2>Where the field folds</h2>",
             f"<p>{m['folding_voxels']} voxels with det J ≤ 0 in the body, in {m['folding_clusters']} cluster(s); "
             f"the {len(clusters)} largest (positions LPS mm, on the transform's grid):</p>",
             table(["fold", "voxels", "volume (mm³)", "centre (L, P, S)", "worst voxel (L, P, S)", "worst det J",
                    "voxels in the lungs"], rows)]
    if "folding" in figures:
        parts.append(f"<figure>{img(figures['folding'], 'the folds on three planes')}</figure>")
    return parts


def worst_landmarks(labels: list[str], landmarks: dict, n: int = 10) -> str:
    after = landmarks["after_mm"]
    used = landmarks["used"]
    order = [i for i in np.argsort(-np.where(used, after, -np.inf)) if used[i]][:n]
    rows = [[cell(html.escape(labels[i] if i < len(labels) else str(i + 1))), cell(str(i + 1), True),
             cell(fmt(landmarks["before_mm"][i]), True), cell(fmt(landmarks["network_mm"][i]), True),
             cell(fmt(after[i]), True), cell(" ".join(fmt(v, 1) for v in landmarks["fixed_lps"][i]))] for i in order]
    return table(["landmark", "row of tre.csv", "before (mm)", "network (mm)", "after (mm)", "fixed position (LPS mm)"],
                 rows)


def _what_was_checked(q: dict) -> str:
    counts = {v: sum(r["verdict"] == v for r in q["checks"]) for v in ("PASS", "WARN", "FAIL", "n/a")}
    accuracy = [r for r in q["checks"] if r["kind"] == "accuracy"]
    text = (f"<p>{len(q['checks'])} checks counted in the verdict ({counts['PASS']} PASS, {counts['WARN']} WARN, "
            f"{counts['FAIL']} FAIL" + (f", {counts['n/a']} not measurable" if counts["n/a"] else "") + "): "
            f"{'the accuracy (' + str(len(accuracy)) + ' landmark or contour checks) and ' if accuracy else ''}"
            "the field's plausibility (folding, Jacobian) and the similarity of the images in the lungs, "
            "against before registration. "
            f"{len(q.get('information', []))} further numbers are information, not counted.</p>")
    if q.get("not_measured"):
        text += ("<p><b>Not measured:</b></p><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in q["not_measured"])
                 + "</ul>")
    return text


def registration_page(summary: dict, figures: dict[str, bytes], landmark_labels: list[str] | None = None,
                      landmarks: dict | None = None, title: str = "Registration quality report") -> str:
    """The page: ``summary`` with its ``quality`` section, ``figures`` by name (``review``,
    ``tre``, ``quality``, ``folding``) as PNG bytes, and the landmark pairs for the
    worst-landmark list."""
    q = summary["quality"]
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="notice">{html.escape(RESEARCH_NOTICE)}</p>',
             f'<p>Overall: {badge(q["overall"], "overall")} {html.escape(OVERALL_MEANING[q["overall"]])}</p>']
    if q.get("reasons"):
        parts.append("<ul class=reasons>" + "".join(f"<li>{html.escape(r)}</li>" for r in q["reasons"]) + "</ul>")
    parts += ["<h2>What was checked</h2>", _what_was_checked(q),
              "<h2>What was registered</h2>", _inputs_table(summary), _provenance_table(summary),
              "<h2>Checks (AAPM TG-132's framework)</h2>", check_table(q), _tolerance_legend(q)]
    parts += _folding_section(q, figures)
    parts += ["<h2>Information (not counted in the verdict)</h2>",
              "<p class=small>Numbers that describe the result but cannot decide it; in particular the inverse "
              "consistency here cannot fail, because the inverse is computed from this same field.</p>",
              information_table(q)]
    if summary.get("warnings"):
        parts.append("<p><b>Notes:</b></p><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in summary["warnings"])
                     + "</ul>")
    if "review" in figures:
        parts += ["<h2>Visual review</h2>",
                  "<p class=muted>Three planes through the lungs. Checkerboards alternate fixed and moving (before) or "
                  "warped moving (after) squares of ~16 mm: edges continue across squares where the images agree. "
                  "|ΔHU| is the absolute difference. det J &lt; 1 is local compression, &gt; 1 expansion; red "
                  "circles mark folding (det J ≤ 0) in the plane. The doubt map is 1 − local NCC of fixed and warped "
                  "moving (quality.nrrd).</p>",
                  f"<figure>{img(figures['review'], 'visual review on three planes')}</figure>"]
    if landmarks is not None and "tre" in figures:
        m = q["measured"].get("tre_mm", {})
        parts += ["<h2>Landmarks</h2>",
                  f"<p>{fmt(m.get('n'))} pairs used; TRE after: mean {fmt(m.get('mean'))} mm, median "
                  f"{fmt(m.get('median'))} mm, 95th percentile {fmt(m.get('p95'))} mm, maximum {fmt(m.get('max'))} "
                  "mm.</p>",
                  f"<figure>{img(figures['tre'], 'TRE histogram')}</figure>",
                  "<p>The worst landmarks after registration:</p>", worst_landmarks(landmark_labels or [], landmarks)]
    if "quality" in figures:
        ic = q["measured"]["inverse_consistency_mm"]
        parts += ["<h2>Where not to trust the field</h2>",
                  f"<p>Doubt (1 − local NCC, {2 * q['ncc_radius_vox'] + 1}³ voxels) in the lungs: mean "
                  f"{fmt(q['measured']['residual_in_lungs']['mean'])}, 95th percentile "
                  f"{fmt(q['measured']['residual_in_lungs']['p95'])}. Inverse consistency through the fixed-point "
                  f"inverse in the lungs (information): mean {format_number(ic['mean'])} mm, maximum "
                  f"{format_number(ic['max'])} mm (inverse_consistency.nrrd).</p>",
                  f"<figure>{img(figures['quality'], 'quality distributions')}</figure>"]
    parts.append(_sign_block())
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
    volume curve, trajectories, ventilation), links to each phase's own report, what was
    registered (files, hashes, command, software, model) and a block to sign."""
    rows = []
    for r in phase_rows:
        k = r["phase"]
        link = f'<a href="{html.escape(phase_links[k])}">report</a>' if k in phase_links else "reference"
        rows.append([cell(str(k)), cell(html.escape(str(r.get("name", "")))),
                     cell(format_number(r.get("volume_change_percent")), True),
                     cell(format_number(r.get("mean_displacement_mm")), True),
                     cell(format_number(r.get("folding_percent")), True), cell(format_number(r.get("jacobian_min")), True),
                     cell(format_number(r.get("inverse_consistency_mean_mm")), True),
                     cell(badge(r["verdict"]) if r.get("verdict") else "–"), cell(link)])
    verdicts = [r["verdict"] for r in phase_rows if r.get("verdict")]
    parts = ["<h1>4DCT registration quality report</h1>", f'<p class="notice">{html.escape(RESEARCH_NOTICE)}</p>',
             f"<p>{len(phase_rows)} phases registered to phase {summary['reference']} "
             f"({html.escape(str(summary.get('order', '')))}).</p>"]
    if verdicts:
        parts.append("<p>Verdicts: " + "; ".join(f"{verdicts.count(v)} {v} ({html.escape(SHORT_MEANING[v])})"
                                                 for v in ("FAIL", "WARN", UNVERIFIED, "PASS") if v in verdicts)
                     + ". Each phase's report says why.</p>")
    parts.append(table(["phase", "name", "lung volume change (%)", "mean displacement (mm)", "folding (%)", "det J min",
                        "inverse consistency mean (mm, information)", "verdict", ""], rows))
    if figure is not None:
        parts.append(f"<figure>{img(figure, 'phases: ventilation, lung volume and trajectories')}</figure>")
    parts += ["<h2>What was registered</h2>", _inputs_table(summary), _provenance_table(summary), _sign_block()]
    return page("4DCT registration quality report", "\n".join(parts))


# --- the reports' files -------------------------------------------------------------------

def report_figures(result, maps, quality: dict | None = None) -> dict[str, bytes]:
    """The report's pictures (PNG bytes): the visual review, the TRE histogram, the doubt maps,
    and where the field folds (with ``quality``'s folding clusters)."""
    figures = {"review": review_figure(result, maps), "quality": quality_histogram(maps)}
    if result.landmarks is not None and result.landmarks["used"].any():
        lm, used = result.landmarks, result.landmarks["used"]
        figures["tre"] = tre_histogram(lm["before_mm"][used], lm["network_mm"][used], lm["after_mm"][used],
                                       result.refinement is not None)
    if quality and quality.get("folding_clusters"):
        figures["folding"] = folding_figure(result, maps, quality["folding_clusters"])
    return figures


def report_writers(result, summary: dict, fixed, moving, landmark_labels: list[str], tolerances: dict[str, Tolerance],
                   tolerances_file=None, contours=None, title: str = "Registration quality report") -> dict:
    """Measure the checks into ``summary["quality"]`` and the provenance into
    ``summary["provenance"]`` now (:func:`add_provenance`); return the writers of
    ``report.html``, ``quality.nrrd`` (1 − local NCC) and ``inverse_consistency.nrrd`` (mm).
    ``contours``: (fixed label map, moving label map carried onto the fixed grid), or None."""
    maps = quality_maps(result, fixed, moving)
    agreement = contour_agreement(*contours) if contours is not None else None
    summary["quality"] = quality_summary(result, maps, tolerances, agreement,
                                         str(tolerances_file) if tolerances_file else None, landmark_labels)
    add_provenance(summary, tolerances_file)
    return {"quality.nrrd": concurrent(lambda p: write_image(maps.residual_image(), p)),
            "inverse_consistency.nrrd": concurrent(lambda p: write_image(maps.inverse_error_image(), p)),
            "report.html": concurrent(lambda p: write_report(p, registration_page(
                summary, report_figures(result, maps, summary["quality"]), landmark_labels, result.landmarks, title)))}


def fourd_report_writers(fourd, summary: dict, images: list, names: list[str], tolerances: dict[str, Tolerance],
                         tolerances_file=None) -> dict:
    """``report.html`` for a 4DCT (a row per phase, the phases figure, links, provenance) and,
    per phase, ``phase_<k>/report.html`` with its quality maps. Each phase's checks go into its
    summary. ``summary["inputs"]["phases"]``: the phases' :func:`image_info` records, in
    order (without them each phase is named only)."""
    writers: dict = {}
    rows, links = [], {}
    reference_image = images[fourd.reference]
    add_provenance(summary, tolerances_file)
    if not summary["inputs"].get("phases"):  # named only: no file to hash
        summary["inputs"]["phases"] = [{**_geometry(n, im), "sha256": None, "sha256_of": "not recorded (a phase name)"}
                                       for n, im in zip(names, images)]
    phase_inputs = summary["inputs"]["phases"]
    for phase in fourd.phases:
        row = phase.row()
        if phase.result is not None:
            out = phase.result.out_grid
            phase_summary = {"inputs": {"fixed": phase_inputs[fourd.reference], "moving": phase_inputs[phase.index],
                                        **{k: v for k, v in summary["inputs"].items() if k != "phases"}},
                             "model": summary.get("model"), "model_meta": summary.get("model_meta"),
                             "command_line": summary.get("command_line"), "device": summary.get("device"),
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
            summary.setdefault("quality", {})[str(phase.index)] = {"overall": q["overall"],
                                                                    "checks_verdict": q["checks_verdict"],
                                                                    "reasons": q["reasons"], "checks": q["checks"]}
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
