"""Choosing the torch device: CUDA only when asked for and present."""

from __future__ import annotations

import torch

from .errors import InputError


def pick_device(device: str) -> tuple[str, str | None]:
    """(device to use, notice or None): ``cuda[:n]`` falls back to the CPU with a notice."""
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            return device, None
        return "cpu", "CUDA is not available here: running on the CPU"
    if device != "cpu":
        raise InputError(f"--device {device}: use cpu or cuda")
    return "cpu", None
