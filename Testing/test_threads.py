"""The result does not depend on the thread count: the network's forward pass, the
refinement (compiled and torch paths) and the whole registration give the same bits with
1, 2 and 4 torch threads (the refinement's numba passes take torch's count), so that
``progreg batch`` (workers of one thread) and ``progreg register`` agree.

The refinement carries a rounding difference of its input far (its trilinear gradient jumps
at cell faces): 1.9e-6 voxels in the network's field became 1.7 mm on the sample pair.
Hence bits, not a tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ProgressiveRegistrationLib.core.grid import Grid
from ProgressiveRegistrationLib.core.lungs import mask_on, thorax_masks
from ProgressiveRegistrationLib.model.config import NetworkConfig, SynthesisConfig
from ProgressiveRegistrationLib.model.modelfile import fold_batchnorm, load_model, save_model
from ProgressiveRegistrationLib.model.network import ProgressiveUNet, UNet
from ProgressiveRegistrationLib.registration import refine as R
from ProgressiveRegistrationLib.registration.engine import register_images
from ProgressiveRegistrationLib.simulation.phantom import generate

THREADS = (1, 2, 4)

#: 3 levels, 8…32 channels. torch picks the backend of a 1×1 convolution by the thread count
#: where batch · channels · slices · rows of its input exceeds 20480 (below, the same one for
#: every count): the output convolution's 1·8·52·52 at 52³ does (the bundled model's: 1·16·64·64).
CONFIG = NetworkConfig(levels=3, base_channels=8)
SIZE = 52


def _per_thread_count(run):
    """``{threads: run()}`` for each of :data:`THREADS` (torch's count, restored after)."""
    before = torch.get_num_threads()
    try:
        out = {}
        for n in THREADS:
            torch.set_num_threads(n)
            out[n] = run()
        return out
    finally:
        torch.set_num_threads(before)


def _same_bits(results: dict, what: str):
    first = results[THREADS[0]]
    for n, result in results.items():
        diff = np.abs(np.asarray(result, np.float64) - np.asarray(first, np.float64)).max()
        assert np.array_equal(result, first), f"{what}: {n} threads differ from {THREADS[0]} by up to {diff:.3g}"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A model file of :data:`CONFIG` at :data:`SIZE`³, its output scaled down as ``tiny_model``'s."""
    torch.manual_seed(0)
    net = UNet(CONFIG)
    with torch.no_grad():
        net.head.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("model") / "small.pt"
    save_model(path, net, CONFIG, SynthesisConfig(size=SIZE), iterations=0, arm="test")
    return str(path)


@pytest.fixture(scope="module")
def pair():
    """A small phantom (3 × 3.5 × 5 mm) and a translated copy."""
    fixed = generate(5, (48, 40, 30), (3.0, 3.5, 5.0)).image
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, (1.5, -2.0, 3.0)), sitk.sitkLinear, -1000.0)
    return fixed, moving


def test_the_forward_pass_gives_the_same_bits_for_every_thread_count():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 64, 64, 8)  # at the output convolution 1·8·64·64 > 20480, and cheap
    unet = fold_batchnorm(UNet(CONFIG))
    progressive = ProgressiveUNet(CONFIG).eval().requires_grad_(False)
    for layout in (torch.channels_last_3d, torch.contiguous_format):
        net, xl = unet.to(memory_format=layout), x.contiguous(memory_format=layout)
        with torch.inference_mode():
            _same_bits(_per_thread_count(lambda net=net, xl=xl: net(xl).numpy()), f"UNet, {layout}")
            # Two levels' output convolutions blended (the schedule's α).
            _same_bits(_per_thread_count(lambda xl=xl: progressive(xl, [0.0, 0.4, 0.6]).numpy()),
                       f"progressive, {layout}")
    # Where a gradient is needed (training) the output convolution still gives one.
    trainable = UNet(CONFIG)
    trainable(x).square().mean().backward()
    assert trainable.head.weight.grad is not None and float(trainable.head.weight.grad.abs().max()) > 0


def test_a_registration_gives_the_same_field_for_every_thread_count(pair, model_file):
    model = load_model(model_file)
    config = R.RefineConfig(levels_mm=(8.0, 5.0), iterations=(10, 10))

    def run():
        result = register_images(*pair, model, refinement=config, warp_moving=False)
        return result.u_vox.numpy(), sitk.GetArrayFromImage(result.displacement)

    runs = _per_thread_count(run)
    _same_bits({n: u for n, (u, _) in runs.items()}, "network field")
    _same_bits({n: d for n, (_, d) in runs.items()}, "displacement")


def test_the_torch_refinement_gives_the_same_bits_for_every_thread_count(pair, monkeypatch):
    """The device-generic path (no numba): the warp is sampled in as many slabs as threads."""
    fixed, moving = pair
    masks = thorax_masks(fixed)

    def network_disp(g: Grid) -> np.ndarray:
        return np.full((*g.shape_zyx, 3), 0.37, np.float32)

    monkeypatch.setattr(R.fused, "available", lambda: False)
    config = R.RefineConfig(levels_mm=(8.0, 5.0), iterations=(5, 5))
    runs = _per_thread_count(lambda: R.refine(fixed, moving, Grid.from_image(fixed), network_disp,
                                              lambda g: mask_on(masks.body, g), config).v_mm.numpy())
    assert np.abs(runs[1]).max() > 0.5  # it moved
    _same_bits(runs, "refined v (torch path)")
