"""Make the Sample Data module's thumbnails of this module's samples (Resources/Icons/Sample*.png).

Each is a coronal slice of what the sample loads, in physical proportions, patient's right on
the left as Slicer shows it: the bundled CT; the simulated inhale and exhale side by side; the
4DCT's phases side by side. Run it after changing the bundled CT or the simulation:

    python scripts/make_sample_thumbnails.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from ProgressiveRegistrationLib.io.images import read_image  # noqa: E402
from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE  # noqa: E402
from ProgressiveRegistrationLib.simulation.breathing import simulate  # noqa: E402

ICONS = ROOT / "ProgressiveRegistration" / "Resources" / "Icons"
SIZE_PX = 128  # the Sample Data module shows thumbnails at about this size
WINDOW_HU = (-1000.0, 300.0)


def coronal(image: sitk.Image) -> np.ndarray:
    """The middle coronal slice as [S, R->L] grey levels in [0, 1], isotropic pixels, superior up."""
    iso = min(image.GetSpacing())
    size = [max(1, round(n * s / iso)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (iso,) * 3,
                          image.GetDirection(), -1024.0)
    a = sitk.GetArrayFromImage(image)[:, image.GetSize()[1] // 2, :]  # [k, i] = [I->S, R->L] for LPS axes
    return np.clip((a[::-1] - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]), 0.0, 1.0)


def thumbnail(slices: list[np.ndarray], path: Path) -> None:
    gap = 2
    height = max(s.shape[0] for s in slices)
    canvas = np.zeros((height, sum(s.shape[1] for s in slices) + gap * (len(slices) - 1)))
    x = 0
    for s in slices:
        canvas[height - s.shape[0]:, x:x + s.shape[1]] = s
        x += s.shape[1] + gap
    scale = SIZE_PX / max(canvas.shape)
    out = sitk.GetImageFromArray((canvas * 255).astype(np.uint8))
    shape = [max(1, round(n * scale)) for n in out.GetSize()]
    out = sitk.Resample(out, shape, sitk.Transform(), sitk.sitkLinear, (0.0, 0.0), (1 / scale, 1 / scale), (1, 0, 0, 1), 0)
    square = sitk.Image(SIZE_PX, SIZE_PX, sitk.sitkUInt8)
    square = sitk.Paste(square, out, out.GetSize(), (0, 0), ((SIZE_PX - shape[0]) // 2, (SIZE_PX - shape[1]) // 2))
    sitk.WriteImage(square, str(path))
    print(path.relative_to(ROOT))


def main() -> None:
    ct = read_image(BUNDLED_SAMPLE)
    thumbnail([coronal(ct)], ICONS / "SampleLungCT.png")
    pair = simulate(ct, seed=0)
    thumbnail([coronal(pair.inhale), coronal(pair.exhale)], ICONS / "SamplePair.png")
    phases = [ct] + [simulate(ct, seed=k, amplitude_si_mm=a, amplitude_ap_mm=a / 3).exhale
                     for k, a in ((1, 5.0), (2, 10.0), (3, 15.0))]
    thumbnail([coronal(p) for p in phases], ICONS / "Sample4DCT.png")


if __name__ == "__main__":
    main()
