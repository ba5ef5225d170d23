"""Files shipped with the module: the trained model and the CT sample (under ``Resources/``)."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[2] / "Resources"  # <module>/ProgressiveRegistrationLib/io/

#: The bundled model (its card: ``Resources/Models/README.md``).
BUNDLED_MODEL = RESOURCES / "Models" / "progreg_cpu64.pt"

#: The bundled CT sample (inhale, HU; its licence: ``Resources/Sample/README.md``).
BUNDLED_SAMPLE = RESOURCES / "Sample" / "lung_ct_small.mha"
