"""The registration U-Net and its progressive training wrapper (paper Sec. II-A, II-B, Fig. 1).

Levels are numbered like the paper: 0 is the coarsest (N/2^(L-1)), L-1 the finest (N).
Level i has ``base_channels * 2^(L-1-i)`` channels (16 ... 256 for the paper's network),
two 3x3x3 convolutions with batch normalisation and LeakyReLU(0.01) per side, max-pool
down, transposed convolution up, skip concatenation, Glorot-normal initialisation.

Batch normalisation: standard BN. With a batch of one 3D volume, the training statistics
are taken over the volume's voxels (≥ 512 per channel even at 8³); the running averages
accumulated during training normalise at test time, which is the paper's ref. [31] use.

:class:`UNet` is the baseline architecture and everything used at test time.
:class:`ProgressiveUNet` adds, for every level except the finest, an input convolution
(2 -> the channels of the pooled features entering that level) and an output convolution
(-> 3 maps); its forward pass takes the schedule weights α and computes only the levels
the schedule needs, at the resolution of the finest active level.

On the CPU the forward pass gives the same bits for any thread count (:class:`Conv3d`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.fields import downsample, resize_field
from .config import NetworkConfig
from .schedule import betas, finest_active, level_factor


def _conv_block(c_in: int, c_out: int, slope: float, momentum: float) -> nn.Sequential:
    return nn.Sequential(
        Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out, momentum=momentum), nn.LeakyReLU(slope),
        Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out, momentum=momentum), nn.LeakyReLU(slope),
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose forward pass on the CPU, where no gradient is needed, is oneDNN's
    whatever the input's size and the thread count.

    torch picks a convolution's backend by a rule made for 2D images
    (``ConvParams::use_mkldnn``): oneDNN only where batch · channels · the first two spatial
    sizes exceed 20480, else its own im2col kernel (``slow_conv3d``). For one 3D volume that
    sends the U-Net's coarse levels and its first convolution (2 channels at 64³) to the slow
    kernel: 6–12× slower there (16 → 32 channels at 32³: 66 against 5.7 ms on 2 threads), half
    of the bundled model's forward pass (``benchmarks/results/forward.md``). For 1×1×1
    convolutions (the output maps) the rule also depends on the thread count (oneDNN with two
    threads or more, its own matrix product with one), and the two round differently (the
    bundled model's field: up to 1.9e-6 voxels, which the refinement, whose trilinear
    gradient jumps at cell faces, carried to 1.7 mm on the sample pair). oneDNN gives the same
    bits for 1 to 8 threads (measured). Where a gradient is needed (training), off the CPU, or
    in a traced, scripted or compiled graph (an ONNX export: ONNX has no oneDNN operator),
    the module's own call: in training oneDNN's forward would gain 1.05–1.2× per iteration,
    but its kernels differ by memory layout, and the default and channels-last layouts would
    no longer train the same network to float rounding."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if (h.device.type == "cpu" and h.dtype == torch.float32 and hasattr(torch, "mkldnn_convolution")
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not (torch.is_grad_enabled() and (h.requires_grad or self.weight.requires_grad))
                and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())):
            return torch.mkldnn_convolution(h, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(h)


def glorot_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """Baseline 3D U-Net: ``(B, 2, N, N, N)`` gradient images -> ``(B, 3, N, N, N)`` u in voxels."""

    def __init__(self, cfg: NetworkConfig | None = None):
        super().__init__()
        cfg = cfg or NetworkConfig()
        self.cfg = cfg
        L = cfg.levels
        self.channels = [cfg.base_channels * 2 ** (L - 1 - i) for i in range(L)]
        c, s, mom = self.channels, cfg.leaky_slope, cfg.bn_momentum
        # enc[i]: input is the images (finest level) or the pooled features of level i+1.
        self.enc = nn.ModuleList(
            [_conv_block(c[i + 1] if i < L - 1 else cfg.in_channels, c[i], s, mom) for i in range(L)])
        # up[i], dec[i] for i >= 1: upsample level i-1's output, concatenate with enc[i].
        self.up = nn.ModuleList([nn.Identity()] + [nn.ConvTranspose3d(c[i - 1], c[i], 2, stride=2) for i in range(1, L)])
        self.dec = nn.ModuleList([nn.Identity()] + [_conv_block(2 * c[i], c[i], s, mom) for i in range(1, L)])
        self.head = Conv3d(c[L - 1], 3, 1)
        glorot_init(self)

    @property
    def levels(self) -> int:
        return self.cfg.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = self.levels
        skips = [None] * L
        h = x
        for i in range(L - 1, -1, -1):
            h = self.enc[i](h if i == L - 1 else F.max_pool3d(h, 2))
            skips[i] = h
        for i in range(1, L):
            h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
        return self.head(h)


class ProgressiveUNet(nn.Module):
    """A :class:`UNet` plus the progressive input/output convolutions of levels 0..L-2."""

    def __init__(self, cfg: NetworkConfig | None = None):
        super().__init__()
        self.unet = UNet(cfg)
        cfg, c = self.unet.cfg, self.unet.channels
        L = cfg.levels
        self.inputs = nn.ModuleList([Conv3d(cfg.in_channels, c[i + 1], 3, padding=1) for i in range(L - 1)])
        self.outputs = nn.ModuleList([Conv3d(c[i], 3, 1) for i in range(L - 1)])
        glorot_init(self.inputs)
        glorot_init(self.outputs)

    @property
    def levels(self) -> int:
        return self.unet.levels

    def forward(self, x: torch.Tensor, alpha) -> torch.Tensor:
        """``x``: images at the resolution of the finest active level ``f``.

        Returns ``Σ_i α_i u_i`` at that resolution (voxels of the full N³ grid). Levels
        finer than ``f`` are not computed; decoder outputs only where α_i > 0.
        """
        alpha = np.asarray(alpha, dtype=np.float64)
        f = finest_active(alpha)
        outs = self._decode(self._encode(x, betas(alpha), f), f, {i for i in range(f + 1) if alpha[i] > 0})
        out = None
        for i, u_i in outs.items():
            u_i = float(alpha[i]) * resize_field(u_i, x.shape[-3:])
            out = u_i if out is None else out + u_i
        return out

    def level_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every level's output map (each at its own resolution) on full-resolution input ``x``,
        through the plain U-Net path (paper Fig. 7)."""
        L = self.levels
        beta = np.zeros(L)
        beta[-1] = 1.0
        outs = self._decode(self._encode(x, beta, L - 1), L - 1, set(range(L)))
        return [outs[i] for i in range(L)]

    def _encode(self, x: torch.Tensor, beta: np.ndarray, f: int) -> list[torch.Tensor | None]:
        """Encoder features of levels ``f`` down to 0; level i < f takes β_i of its own input
        convolution of the images and γ_i = 1 − β_i of the pooled finer features."""
        net, L = self.unet, self.levels
        skips: list[torch.Tensor | None] = [None] * L
        h = None
        for i in range(f, -1, -1):
            if i == L - 1:
                h = net.enc[i](x)
            elif beta[i] == 0.0:  # γ_i = 1: the plain U-Net path
                h = net.enc[i](F.max_pool3d(h, 2))
            else:
                entry = self.inputs[i](downsample(x, 2 ** (f - i)))
                if beta[i] < 1.0:  # γ_i > 0: the finer level feeds this one too
                    entry = float(beta[i]) * entry + float(1.0 - beta[i]) * F.max_pool3d(h, 2)
                h = net.enc[i](entry)
            skips[i] = h
        return skips

    def _decode(self, skips: list[torch.Tensor | None], f: int, wanted: set[int]) -> dict[int, torch.Tensor]:
        """Decoder from level 0 up to ``f``; the output map of each level in ``wanted``."""
        net, L = self.unet, self.levels
        h = skips[0]
        outs = {}
        for i in range(f + 1):
            if i > 0:
                h = net.dec[i](torch.cat([net.up[i](h), skips[i]], 1))
            if i in wanted:
                outs[i] = (net.head if i == L - 1 else self.outputs[i])(h)
        return outs


class ScheduledUNet(nn.Module):
    """A :class:`ProgressiveUNet` as it is at schedule weights α, seen as a plain network
    from N³ images to an N³ field (in voxels): what the registration engine runs when a
    snapshot is scored during training."""

    def __init__(self, model: ProgressiveUNet, alpha: np.ndarray):
        super().__init__()
        self.model, self.alpha = model, np.asarray(alpha)
        self.levels = model.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = level_factor(self.alpha, self.levels)
        return resize_field(self.model(downsample(x, factor), self.alpha), x.shape[-3:])
