"""Configuration: the paper's defaults, clear errors, and the committed configs."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import MODULE_DIR, ROOT, SHARED, run_process

from ProgressiveRegistrationLib.core.errors import InputError
from ProgressiveRegistrationLib.model.config import load_config
from ProgressiveRegistrationLib.training.trainset import collect_images


def test_config_errors():
    with pytest.raises(InputError, match="unknown key"):
        load_config(None, ["train.iterationz=3"])
    with pytest.raises(InputError, match="multiple of 16"):
        load_config(None, ["synthesis.size=40"])
    for bad in ("train.snapshot_every=0", "train.keep_snapshots=-1", "train.iterations=0", "train.iterations=1.5"):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            load_config(None, [bad])
    for bad in ("synthesis.identity_fraction=1.5", "synthesis.breathing_fraction=-0.1", "synthesis.identity_scale=-1",
                "synthesis.breathing_si_mm=[70,10]", "synthesis.breathing_si_mm=[-5,10]", "synthesis.breathing_si_mm=[10]",
                'synthesis.breathing_si_mm=["a","b"]'):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            load_config(None, [bad])
    with pytest.raises(InputError, match="train.mode baseline"):
        load_config(None, ["train.init_model=some.pt", "train.mode=progressive"])
    cfg = load_config(None, ["synthesis.breathing_si_mm=[5, 40]", "train.init_model=some.pt", "train.mode=baseline"])
    assert cfg.synthesis.breathing_si_mm == (5.0, 40.0)


COMMITTED = [*(ROOT / "configs").glob("*.yaml"), *(ROOT / "experiments" / "candidates").glob("*.yaml")]


@pytest.mark.parametrize("name", sorted(str(p.relative_to(ROOT)) for p in COMMITTED))
def test_committed_configs_load_and_name_existing_images(name, monkeypatch):
    """Each committed config is one command away from a run: valid keys and values, and every
    training/validation image it names exists (paths are relative to the repository root;
    ../shared is checked where it is present)."""
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / name)
    for entry in cfg.train.images + cfg.train.validation_images:
        if entry.startswith("phantom:") or entry.startswith("/"):
            continue  # generated, or a placeholder for the user's data (paper.yaml)
        path = ROOT / entry
        if not path.resolve().is_relative_to(SHARED.resolve()) or SHARED.is_dir():
            assert path.exists(), f"{name}: {entry} does not exist"
    phantoms = [e for e in cfg.train.images + cfg.train.validation_images if e.startswith("phantom:")]
    if phantoms:
        assert all(ref.startswith("phantom:") for ref in collect_images(phantoms))  # the ranges parse


def test_configs_load_under_an_ascii_locale():
    """Config files are UTF-8 (δ, ³ in their comments) whatever the locale: native libraries
    (DCMTK, GDCM) and Slicer itself may switch the process to the C locale."""
    code = ("import locale, sys, pathlib; from ProgressiveRegistrationLib.model.config import load_config; "
            "enc = locale.getpreferredencoding(False); assert enc.lower() in ('ansi_x3.4-1968', 'ascii'), enc; "
            "[load_config(p) for p in sorted(pathlib.Path(sys.argv[1]).glob('*.yaml'))]")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = run_process([sys.executable, "-c", code, str(ROOT / "configs")], cwd=MODULE_DIR, env=env,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
