"""Shared fixtures. Tests may read ../shared/data (CI has it beside the checkout)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "ProgressiveRegistration"
SHARED = ROOT.parent / "shared"
SAMPLE = MODULE_DIR / "Resources" / "Sample" / "lung_ct_small.mha"

if str(MODULE_DIR) not in sys.path:  # also works without `pip install -e .`
    sys.path.insert(0, str(MODULE_DIR))


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (CI provides ../shared)")
    return p


@pytest.fixture
def dirlab_root() -> Path:
    return shared_path("data", "dirlab")


@pytest.fixture
def chest_ct() -> Path:
    return shared_path("data", "ct", "totalsegmentator", "chest_crop_pulmonary.nii.gz")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random U-Net model file (32³, 3 levels): for checks of geometry and files, not accuracy.

    The output layer is scaled down so that displacements are a few voxels (smooth, mostly
    fold-free) and clearly not the identity.
    """
    import torch

    from ProgressiveRegistrationLib.config import NetworkConfig
    from ProgressiveRegistrationLib.network import UNet, export_state

    torch.manual_seed(0)
    cfg = NetworkConfig(levels=3, base_channels=4)
    net = UNet(cfg)
    with torch.no_grad():
        net.head.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(export_state(net, cfg, {"input": {"size": 32}, "iterations": 0, "arm": "test"}), path)
    return str(path)


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield
