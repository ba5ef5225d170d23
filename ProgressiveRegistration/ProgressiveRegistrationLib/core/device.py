"""Choosing the torch device: ``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, or
``cuda[:n]`` (the CPU with a notice where there is no CUDA)."""

from __future__ import annotations

import torch

from .errors import InputError


def pick_device(device: str) -> tuple[str, str | None]:
    """(device to use, notice or None).

    ``auto``: ``cuda`` when torch sees a CUDA device, else ``cpu``, silently (it asked for
    nothing in particular); ``cuda[:n]`` falls back to the CPU with a notice; ``cpu`` is the
    CPU. Anything else is bad input.
    """
    if device == "auto":
        return ("cuda" if torch.cuda.is_available() else "cpu"), None
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if torch.cuda.is_available():
            return device, None
        return "cpu", "CUDA is not available here: running on the CPU"
    if device != "cpu":
        raise InputError(f"--device {device}: use auto, cpu or cuda")
    return "cpu", None
