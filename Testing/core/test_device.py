"""Device choice: CUDA only when present; anything else is bad input."""

from __future__ import annotations

import pytest
import torch

from ProgressiveRegistrationLib.core.device import pick_device
from ProgressiveRegistrationLib.core.errors import InputError


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == ("cpu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, notice = pick_device("cuda:1")
    assert device == "cpu" and "not available" in notice
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == ("cuda:1", None)
    with pytest.raises(InputError, match="use cpu or cuda"):
        pick_device("tpu")
