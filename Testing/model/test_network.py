"""The progressive U-Net: the paper's shape, one-hot α equals the plain U-Net, levels not computed."""

from __future__ import annotations

import torch

from ProgressiveRegistrationLib.model.config import NetworkConfig
from ProgressiveRegistrationLib.model.network import ProgressiveUNet, UNet


def test_last_level_only_equals_plain_unet():
    torch.manual_seed(0)
    net = ProgressiveUNet(NetworkConfig(levels=4, base_channels=4)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, [0, 0, 0, 1]), net.unet(x), rtol=0, atol=0)
    # The exported test-time network has exactly the U-Net's parameters.
    plain = UNet(NetworkConfig(levels=4, base_channels=4))
    plain.load_state_dict(net.unet.state_dict())
    assert set(plain.state_dict()) == set(net.unet.state_dict())


def test_paper_network_shape_and_size():
    net = UNet(NetworkConfig())
    assert net.channels == [256, 128, 64, 32, 16]
    progressive = ProgressiveUNet(NetworkConfig())
    assert len(progressive.inputs) == 4 and len(progressive.outputs) == 4  # the paper's eight extra layers
    w = net.enc[4][0].weight
    assert w.shape == (16, 2, 3, 3, 3)
    assert isinstance(net.enc[4][2], torch.nn.LeakyReLU) and net.enc[4][2].negative_slope == 0.01


def test_finer_levels_are_not_computed():
    net = ProgressiveUNet(NetworkConfig(levels=3, base_channels=4))
    called = []
    net.unet.enc[2].register_forward_hook(lambda *a: called.append("enc2"))
    net.unet.dec[2].register_forward_hook(lambda *a: called.append("dec2"))
    out = net(torch.randn(1, 2, 4, 4, 4), [1, 0, 0])  # coarsest level at its own 4³ resolution
    assert out.shape == (1, 3, 4, 4, 4) and not called
    out = net(torch.randn(1, 2, 8, 8, 8), [0.3, 0.7, 0])
    assert out.shape == (1, 3, 8, 8, 8) and not called
    net(torch.randn(1, 2, 16, 16, 16), [0, 0.5, 0.5])
    assert called == ["enc2", "dec2"]
