"""The model file format: BN folding is exact, and a model file cannot run code."""

from __future__ import annotations

import pytest
import torch

from ProgressiveRegistrationLib.model.config import NetworkConfig
from ProgressiveRegistrationLib.model.modelfile import fold_batchnorm
from ProgressiveRegistrationLib.model.network import UNet


def test_batchnorm_folding_is_exact():
    torch.manual_seed(0)
    net = UNet(NetworkConfig(levels=3, base_channels=4))
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        ref = net.eval()(x)
        folded = fold_batchnorm(net)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4)


class _Payload:
    """Unpickling this runs code: what a malicious model file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_cannot_run_code(tmp_path, tiny_model):
    from ProgressiveRegistrationLib.core.errors import InputError
    from ProgressiveRegistrationLib.model.modelfile import load_model

    state = torch.load(tiny_model, weights_only=True)
    marker = tmp_path / "ran"
    state["extra"] = _Payload(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not a progreg model file"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    assert load_model(tiny_model).size == 32  # a plain model file still loads
