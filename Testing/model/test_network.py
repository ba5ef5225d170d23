"""The progressive U-Net: the paper's shape, one-hot α equals the plain U-Net, levels not computed, and
its convolutions' backend (oneDNN at inference, torch's own operator in training and exported graphs)."""

from __future__ import annotations

import warnings

import torch

from ProgressiveRegistrationLib.model.config import NetworkConfig
from ProgressiveRegistrationLib.model.network import Conv3d, ProgressiveUNet, UNet


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


def _convolution_kernels(run) -> set[str]:
    """The names of the aten convolution kernels that ``run()`` calls (torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {e.key for e in prof.key_averages() if "conv" in e.key and e.key.startswith("aten::")
            and e.key not in ("aten::conv3d", "aten::convolution", "aten::_convolution")}


def test_inference_convolutions_run_on_onednn_whatever_their_size():
    """The shapes torch's backend rule sends to its slow im2col kernel (a single volume whose
    channels · slices · rows ≤ 20480: the coarse levels, the 2-channel first layer) run on
    oneDNN at inference, with torch's own result to float rounding; with a gradient, torch's
    own kernel and bit for bit its result."""
    torch.manual_seed(0)
    for c_in, c_out, side in ((16, 32, 32), (2, 16, 64), (256, 128, 8)):
        conv = Conv3d(c_in, c_out, 3, padding=1)
        plain = torch.nn.Conv3d(c_in, c_out, 3, padding=1)
        plain.load_state_dict(conv.state_dict())
        x = torch.randn(1, c_in, side, side, side).contiguous(memory_format=torch.channels_last_3d)
        assert "aten::slow_conv3d_forward" in _convolution_kernels(lambda p=plain, x=x: p(x))  # torch's own rule
        with torch.inference_mode():
            kernels = _convolution_kernels(lambda c=conv, x=x: c(x))
            assert kernels == {"aten::mkldnn_convolution"}, kernels
            torch.testing.assert_close(conv(x), plain(x), rtol=1e-4, atol=1e-4)
        with torch.enable_grad():
            assert "aten::slow_conv3d_forward" in _convolution_kernels(lambda c=conv, x=x: c(x))
            assert torch.equal(conv(x), plain(x))
    # The U-Net's every convolution is one of these (the output maps included).
    net = UNet(NetworkConfig(levels=3, base_channels=4))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(isinstance(m, Conv3d) for m in convs)


def test_an_exported_or_traced_network_holds_no_onednn_operator():
    """Exported (``torch.export``, as ``torch.onnx.export(dynamo=True)`` exports) or traced (as
    its older TorchScript path traces), the convolutions are torch's own operator, which ONNX
    knows; oneDNN's has no ONNX counterpart (and cannot even be exported)."""
    net = UNet(NetworkConfig(levels=2, base_channels=4)).eval().requires_grad_(False)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        exported = torch.export.export(net, (x,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: still what the old exporter runs
            traced = str(torch.jit.trace(net, x).inlined_graph)
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "aten.conv3d.default" in ops and not any("mkldnn" in op for op in ops), ops
    assert "aten::_convolution" in traced and "mkldnn" not in traced
