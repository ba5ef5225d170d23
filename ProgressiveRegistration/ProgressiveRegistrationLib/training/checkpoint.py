"""Training checkpoints and the export of their models.

A checkpoint (``checkpoint.pt``) holds the iteration, the config, the log, each arm's
weights and optimiser state, and the RNG states: everything a resumed run needs to continue
bit for bit. Like a model file it holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``. Checkpoints and models are written atomically; a full disk,
no permission or a read-only file system is a :class:`errors.WriteError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.atomic import write_file
from ..core.errors import InputError, write_error
from ..model.config import Config, NetworkConfig, SynthesisConfig, config_from_dict
from ..model.modelfile import load_model, save_model
from ..model.network import ProgressiveUNet


def _numpy_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                         state["cached_gaussian"]))


def save_checkpoint(path: Path, iteration: int, cfg: Config, log: list[dict], models: dict[str, torch.nn.Module],
                    optims: dict[str, torch.optim.Optimizer]) -> None:
    state = {"iteration": iteration, "config": cfg.to_dict(), "log": log,
             "models": {a: m.state_dict() for a, m in models.items()},
             "optims": {a: o.state_dict() for a, o in optims.items()},
             "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_rng_state()}
    write_file(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, device="cpu") -> dict:
    if not Path(path).is_file():
        raise InputError(f"{path}: no checkpoint")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None


def restore(state: dict, models: dict[str, torch.nn.Module], optims: dict[str, torch.optim.Optimizer],
            path: Path) -> tuple[int, list[dict]]:
    """Load ``state`` into the arms and the RNGs; returns (iteration, log)."""
    if set(state["models"]) != set(models):
        raise InputError(f"{path}: checkpoint holds arms {sorted(state['models'])}, config asks {sorted(models)}")
    for a in models:
        models[a].load_state_dict(state["models"][a])
        optims[a].load_state_dict(state["optims"][a])
    torch.set_rng_state(state["torch_rng"].cpu())
    _set_numpy_rng_state(state["numpy_rng"])
    return state["iteration"], state["log"]


def initial_weights(path: str | Path, network: NetworkConfig, synthesis: SynthesisConfig) -> dict[str, torch.Tensor]:
    """The U-Net weights of the model file ``path`` (``train.init_model``: fine-tuning), batch
    norms unfolded; InputError where the file's network is not ``network`` or its input (grid
    size, crop margin, input scale) is not ``synthesis``'s."""
    model = load_model(path, fold_bn=False)
    if model.net.cfg != network:
        raise InputError(f"train.init_model: {path} holds the network {model.net.cfg}, the config asks {network}")
    if model.synthesis.inference_input() != synthesis.inference_input():
        raise InputError(f"train.init_model: {path} takes the input {model.synthesis.inference_input()}, the config "
                         f"makes {synthesis.inference_input()}")
    return {k: v.contiguous() for k, v in model.net.state_dict().items()}


def export_models(models: dict[str, ProgressiveUNet], cfg: Config, iteration: int, out: Path, suffix: str = ""
                  ) -> list[Path]:
    """Write each arm's plain U-Net as ``model<suffix>.pt`` (the progressive arm, or the only
    arm) or ``model_baseline<suffix>.pt`` in ``out``: model files (:mod:`modelfile`)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise (write_error(err, out) or err) from None
    written = []
    for arm, model in models.items():
        name = f"model{suffix}.pt" if (arm == "progressive" or len(models) == 1) else f"model_baseline{suffix}.pt"
        save_model(out / name, model.unet, cfg.network, cfg.synthesis, iterations=iteration, arm=arm,
                   config=cfg.to_dict())
        written.append(out / name)
    return written


def export_checkpoint(run: Path) -> list[Path]:
    """The models of ``run/checkpoint.pt`` as of its last snapshot (e.g. of a run still training)."""
    path = Path(run) / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to export")
    state = read_checkpoint(path)
    cfg = config_from_dict(state["config"])
    models = {}
    for arm, weights in state["models"].items():
        models[arm] = ProgressiveUNet(cfg.network)
        models[arm].load_state_dict(weights)
    return export_models(models, cfg, int(state["iteration"]), Path(run))
