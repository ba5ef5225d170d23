"""Device choice: auto picks CUDA only when present, silently; cuda without one falls back
with a notice; anything else is bad input."""

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
    assert pick_device("cuda")[0] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == ("cuda:1", None)
    assert pick_device("cuda") == ("cuda", None)
    for bad in ("tpu", "cuda:x", "cudax", "", "AUTO"):
        with pytest.raises(InputError, match="use auto, cpu or cuda"):
            pick_device(bad)


def test_auto_is_cuda_when_present_else_the_cpu_without_a_notice(monkeypatch):
    # This machine as it is: no notice either way.
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == ("cpu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == ("cuda", None)
