"""Checkpoints: plain tensors and containers only, restoring weights, optimiser and RNGs."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
import torch

from ProgressiveRegistrationLib.core.errors import WriteError
from ProgressiveRegistrationLib.model.config import load_config
from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.model.network import ProgressiveUNet
from ProgressiveRegistrationLib.training.checkpoint import export_models, read_checkpoint, restore, save_checkpoint


def _arms(cfg, seed):
    torch.manual_seed(seed)
    models = {"progressive": ProgressiveUNet(cfg.network)}
    optims = {"progressive": torch.optim.SGD(models["progressive"].parameters(), lr=0.1, momentum=0.5)}
    x = torch.randn(1, 2, *[cfg.synthesis.size] * 3)
    models["progressive"](x, np.array([0.0, 0.0, 1.0])).square().mean().backward()
    optims["progressive"].step()  # a momentum buffer to restore
    return models, optims


def test_round_trip_restores_everything(tmp_path):
    cfg = load_config(None, ["synthesis.size=16", "network.levels=3", "network.base_channels=2"])
    models, optims = _arms(cfg, 0)
    np.random.seed(5)
    torch.manual_seed(6)
    save_checkpoint(tmp_path / "checkpoint.pt", 7, cfg, [{"iteration": 7, "loss": 0.5}], models, optims)
    expect_np, expect_torch = np.random.rand(3), torch.rand(3)
    state = read_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True: plain data only
    other, other_opt = _arms(cfg, 1)
    iteration, log = restore(state, other, other_opt, tmp_path / "checkpoint.pt")
    assert iteration == 7 and log == [{"iteration": 7, "loss": 0.5}]
    for a, b in zip(models["progressive"].state_dict().values(), other["progressive"].state_dict().values()):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in other_opt["progressive"].state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, [s["momentum_buffer"] for s in
                                                            optims["progressive"].state_dict()["state"].values()]))
    np.testing.assert_array_equal(np.random.rand(3), expect_np)
    assert torch.equal(torch.rand(3), expect_torch)


def test_exported_model_is_the_plain_unet_of_the_arm(tmp_path):
    cfg = load_config(None, ["synthesis.size=16", "network.levels=3", "network.base_channels=2"])
    models, _ = _arms(cfg, 0)
    [path] = export_models(models, cfg, 12, tmp_path)
    model = load_model(path, fold_bn=False)
    assert path.name == "model.pt" and model.meta == {"iterations": 12, "arm": "progressive"} and model.size == 16
    x = torch.randn(1, 2, 16, 16, 16)
    models["progressive"].eval()
    with torch.no_grad():
        expect = models["progressive"](x, np.array([0.0, 0.0, 1.0]))
        got = model.net(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    """torch says a full disk as a RuntimeError without the errno: with no space left, it is one."""
    cfg = load_config(None, ["synthesis.size=16", "network.levels=3", "network.base_channels=2"])
    models, optims = _arms(cfg, 0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, 7, cfg, [], models, optims)

    def full(state, tmp):
        with open(tmp, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 << 30, 100 << 30, 512))
    with pytest.raises(WriteError) as err:
        save_checkpoint(path, 8, cfg, [], models, optims)
    assert str(err.value) == f"no space left on device while writing {path}"
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"] and read_checkpoint(path)["iteration"] == 7


def test_models_into_a_read_only_folder_are_one_line(tmp_path, monkeypatch):
    cfg = load_config(None, ["synthesis.size=16", "network.levels=3", "network.base_channels=2"])
    models, _ = _arms(cfg, 0)

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(WriteError, match=f"cannot write to {tmp_path / 'snapshots'}: read-only file system"):
        export_models(models, cfg, 12, tmp_path / "snapshots", suffix="_000012")
