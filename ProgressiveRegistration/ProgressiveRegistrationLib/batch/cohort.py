"""The study's table and page: ``cohort.csv`` (a row per case) and ``cohort.html`` (box plots
of TRE, folding and time across the cases, the failures, a link to each case's report)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.atomic import write_csv, write_text
from ..registration.figures import png_bytes, pyplot
from ..registration.report import badge, cell, fmt, img, page, table
from .manifest import STUDY_FILES


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows if r.get(key) is not None and r["status"] == "done"], dtype=np.float64)


def box_plots(rows: list[dict]) -> bytes | None:
    """TRE (before, network, after), folding and seconds across the done cases."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
    refined = any(r.get("refined") for r in done)
    tre = [(_values(rows, f"tre_{k}_mm"), label) for k, label in (("before", "before"), ("network", "network alone"),
                                                                    ("after", "refined"))
           if k != "after" or refined]
    tre = [(v, label) for v, label in tre if v.size]
    if tre:
        axes[0].boxplot([v for v, _ in tre], tick_labels=[label for _, label in tre])
        axes[0].set_ylabel("landmark TRE, case mean (mm)")
    else:
        axes[0].text(0.5, 0.5, "no landmarks", ha="center", va="center", transform=axes[0].transAxes)
    axes[1].boxplot([_values(rows, "folding_percent")], tick_labels=["folding"])
    axes[1].set_ylabel("body voxels with det J ≤ 0 (%)")
    axes[2].boxplot([_values(rows, "seconds")], tick_labels=["time"])
    axes[2].set_ylabel("seconds per case")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(done)} cases done", fontsize=10)
    return png_bytes(fig, dpi=90)


def cohort_page(out: Path, rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"] != "done"]
    parts = ["<h1>Cohort registration</h1>",
             f"<p>{len(rows)} cases: {len(rows) - len(failed)} done, {len(failed)} failed.</p>"]
    picture = box_plots(rows)
    if picture is not None:
        parts.append(f"<figure>{img(picture, 'box plots of TRE, folding and time')}</figure>")
    if failed:
        parts += ["<h2>Failures</h2>", table(["case", "error"], [[cell(html.escape(r["id"])),
                                                                  cell(html.escape(r["error"]))] for r in failed])]
    lines = []
    for r in rows:
        report = out / r["id"] / "report.html"
        link = f'<a href="{html.escape(r["id"])}/report.html">report</a>' if report.is_file() else ""
        status = "done" if r["status"] == "done" else "failed"
        lines.append([cell(html.escape(r["id"])), cell(r["kind"]), cell(f'<b data-status="{status}">{status}</b>'),
                      *(cell(fmt(r.get(k)), True) for k in ("tre_before_mm", "tre_network_mm", "tre_after_mm")),
                      cell(fmt(r.get("folding_percent"), 3), True), cell(fmt(r.get("lung_volume_change_percent"), 1), True),
                      cell(badge(r["quality"]) if r.get("quality") else "–"), cell(fmt(r.get("seconds"), 1), True),
                      cell(link)])
    parts += ["<h2>Cases</h2>", table(["case", "kind", "status", "TRE before (mm)", "network (mm)", "after (mm)",
                                        "folding (%)", "lung volume change (%)", "quality", "seconds", ""], lines)]
    return page("Cohort registration", "\n".join(parts))


def cohort_writers(out: Path, rows: list[dict]) -> dict[str, Callable[[Path], object]]:
    """The writers of ``cohort.csv`` and ``cohort.html`` for ``rows``."""
    records = [{k: v for k, v in r.items() if k != "skipped"} for r in rows]
    table_name, page_name = STUDY_FILES  # no case id is one of these (the manifest's check)
    return {table_name: lambda p: write_csv(p, records), page_name: lambda p: write_text(p, cohort_page(out, rows))}
