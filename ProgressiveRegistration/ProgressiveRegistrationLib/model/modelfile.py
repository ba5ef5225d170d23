"""The model file format: what ``model.pt`` holds, written and read in one place.

A model file is a ``torch.save`` of plain containers and tensors only::

    {"format": "progreg-model", "version": 1,
     "network": NetworkConfig fields,           # the plain U-Net (paper Sec. II-A)
     "state_dict": {name: tensor},              # its weights, BN running statistics included
     "input": SynthesisConfig.inference_input(),  # how to crop and prepare the images
     "iterations": int, "arm": "progressive" | "baseline", "config": the training config}

It is read with ``torch.load(weights_only=True)``: a file holding anything else (a pickled
object that could run code) is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..core.atomic import write_file
from ..core.checks import check_network_size
from ..core.errors import InputError
from ..io.resources import BUNDLED_MODEL
from .config import NetworkConfig, SynthesisConfig
from .network import UNet

MODEL_FORMAT, MODEL_VERSION = "progreg-model", 1


@dataclass
class Model:
    """An inference-ready U-Net (BN folded into the convolutions) and its input settings."""

    net: nn.Module
    synthesis: SynthesisConfig
    path: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.synthesis.size

    def with_size(self, size: int | None) -> Model:
        """The same network run on an N = ``size`` grid (None: unchanged)."""
        if size is None:
            return self
        check_network_size(size, self.net.levels)
        return dataclasses.replace(self, synthesis=dataclasses.replace(self.synthesis, size=size))


def model_state(net: UNet, cfg: NetworkConfig, synthesis: SynthesisConfig, **extra) -> dict:
    """The content of a model file for the plain U-Net ``net``; ``extra``: iterations, arm, config."""
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "network": asdict(cfg),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
            "input": synthesis.inference_input(), **extra}


def save_model(path: str | Path, net: UNet, cfg: NetworkConfig, synthesis: SynthesisConfig, **extra) -> None:
    """Write a model file atomically (see the module docstring)."""
    state = model_state(net, cfg, synthesis, **extra)
    write_file(path, lambda tmp: torch.save(state, tmp))


def fold_batchnorm(net: UNet, copy_net: bool = True) -> nn.Module:
    """``net`` (a copy unless ``copy_net`` is False; eval mode) with every BatchNorm3d folded
    into the preceding conv.

    ``BN(conv(x)) = conv'(x)`` with ``w' = w·g/σ`` and ``b' = β + (b − μ)·g/σ``: one pass
    less over every feature map, the same numbers up to rounding.
    """
    net = (copy.deepcopy(net) if copy_net else net).eval()
    with torch.no_grad():
        for module in net.modules():
            if not isinstance(module, nn.Sequential):
                continue
            layers = list(module)
            for k in range(len(layers) - 1):
                conv, bn = layers[k], layers[k + 1]
                if isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d):
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
                    conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None, None])
                    module[k + 1] = nn.Identity()
    return net.requires_grad_(False)


def load_model(path: str | Path | None = None, device: str = "cpu", fold_bn: bool = True) -> Model:
    """Load a model file (default: the bundled model); InputError if it is missing, corrupt,
    of another version, or holds anything but tensors and plain containers."""
    path = Path(path) if path else BUNDLED_MODEL
    if not path.is_file():
        raise InputError(f"{path}: no such model file" + (" (the bundled model is missing from this install)"
                                                          if path == BUNDLED_MODEL else ""))
    try:
        with warnings.catch_warnings():  # torch's own warnings about a foreign file are not the user's concern
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means a bad file
        # torch's own message suggests weights_only=False: unsafe advice for a file of unknown origin.
        raise InputError(f"{path}: not a progreg model file (it cannot be read as one)") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a progreg model file")
    if state.get("version") != MODEL_VERSION:
        raise InputError(f"{path}: model file version {state.get('version')} is not supported "
                         f"(this version reads {MODEL_VERSION})")
    try:
        net = UNet(NetworkConfig(**state["network"]))
        syn = SynthesisConfig(**{k: v for k, v in state["input"].items() if k in SynthesisConfig.__dataclass_fields__})
        weights = state["state_dict"]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: model file is damaged or incomplete (missing or bad entry: {err})") from None
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError):
        # torch lists every mismatched tensor on its own line; one line says what is wrong.
        raise InputError(f"{path}: model file is damaged: its weights do not fit the network it describes") from None
    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError(f"{path}: model file is damaged: {len(bad)} weight tensors hold NaN or Inf (first: {bad[0]})")
    net = fold_batchnorm(net, copy_net=False) if fold_bn else net.eval().requires_grad_(False)
    # channels_last_3d: oneDNN's fastest convolution layout on the CPU (benchmarks/results/forward.md).
    net = net.to(device, memory_format=torch.channels_last_3d)
    return Model(net, syn, str(path), {k: state.get(k) for k in ("iterations", "arm")})
