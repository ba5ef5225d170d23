"""Make the README's pictures (Resources/Screenshots/) from real runs of the command line:

* ``overview.png``: ``progreg demo``'s overview figure;
* ``phases.png``: ``progreg register-4d`` of eight phases of the bundled CT over one simulated
  breath (diaphragm 0 -> 15 mm -> 0), 40 points followed;
* ``report.png``: the demo's quality report, rendered by headless Chromium at 1280 px wide
  (its top: the verdict, what was checked and registered).

    python scripts/make_screenshots.py [--work DIR]

Needs the library's dependencies and, for ``report.png``, ``chromium`` on the PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from ProgressiveRegistrationLib.cli import main as progreg  # noqa: E402
from ProgressiveRegistrationLib.io.images import read_image  # noqa: E402
from ProgressiveRegistrationLib.io.landmarks import write_markups_json  # noqa: E402
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

SHOTS = ROOT / "Resources" / "Screenshots"


def run(*argv) -> None:
    code = progreg([str(a) for a in argv])
    if code:
        raise SystemExit(f"progreg {argv[0]} failed ({code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="progreg-shots-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the report names its inputs as the command gave them: short, relative paths
    run("demo", "--out", "demo")
    shutil.copyfile(work / "demo" / "overview.png", SHOTS / "overview.png")

    ct = read_image(BUNDLED_SAMPLE)
    phases = []
    for k, amplitude in enumerate(15.0 * np.sin(np.linspace(0, np.pi, 8, endpoint=False)) ** 2):
        image = ct if k == 0 else simulate(ct, seed=k, amplitude_si_mm=amplitude, amplitude_ap_mm=amplitude / 3).exhale
        phases.append(work / f"phase{k}.nrrd")
        sitk.WriteImage(image, str(phases[-1]))
    write_markups_json(work / "points.mrk.json", simulate(ct, seed=0, n_landmarks=40).fixed_points_lps)
    run("register-4d", *phases, "--reference", 0, "--points", work / "points.mrk.json", "--out", work / "4d")
    shutil.copyfile(work / "4d" / "phases.png", SHOTS / "phases.png")

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1280,1000", f"--screenshot={SHOTS / 'report.png'}",
                        (work / "demo" / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    else:
        print("chromium not found: report.png not made", file=sys.stderr)
    print(f"written into {SHOTS.relative_to(ROOT)} (runs in {work})")


if __name__ == "__main__":
    main()
