"""Figures for the docs: a phantom next to a real chest CT, as images and as network input.

    python experiments/phantom_vs_real.py    # writes experiments/phantom_vs_real.png (needs ../shared for the real CT)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from ProgressiveRegistrationLib.core import fields  # noqa: E402
from ProgressiveRegistrationLib.simulation import phantom  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "ct" / "totalsegmentator" / "chest_crop_aorta.nii.gz"


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = sitk.ReadImage(str(REAL if REAL.is_file() else ROOT / "ProgressiveRegistration/Resources/Sample/lung_ct_small.mha"))
    ph = phantom.generate(0, size=(256, 220, 128), spacing_mm=(1.4, 1.4, 2.5)).image
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for row, (name, img) in enumerate((("real chest CT (TotalSegmentator sample)", real), ("phantom, seed 0", ph))):
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        sx, sy, sz = img.GetSpacing()
        k, j = int(a.shape[0] * 0.6), int(a.shape[1] * 0.45)
        grad = fields.gaussian_gradient_magnitude(torch.from_numpy(a / 1000.0), 0.5).numpy()
        axes[row, 0].imshow(a[k], cmap="gray", vmin=-1000, vmax=400, aspect=sy / sx)
        axes[row, 1].imshow(a[:, j][::-1], cmap="gray", vmin=-1000, vmax=400, aspect=sz / sx)
        axes[row, 2].imshow(grad[k], cmap="magma", vmin=0, vmax=0.4, aspect=sy / sx)
        axes[row, 3].imshow(grad[:, j][::-1], cmap="magma", vmin=0, vmax=0.4, aspect=sz / sx)
        axes[row, 0].set_ylabel(name)
        for ax, title in zip(axes[row], ("axial", "coronal", "gradient magnitude (axial)", "gradient magnitude (coronal)")):
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = ROOT / "experiments" / "phantom_vs_real.png"
    fig.savefig(out, dpi=70)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
