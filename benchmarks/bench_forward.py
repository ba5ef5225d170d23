"""Network forward pass at N³ with the paper-size U-Net: eager torch versus the optimised paths.

Variants, all measured in the same run on the same input (median of --repeats):

* eager: the trained module as is (BN in eval mode), ``torch.no_grad``;
* folded: BN folded into the convolutions, ``torch.inference_mode`` (what ``progreg`` uses);
* folded + channels_last_3d;
* folded + channels_last_3d with torch's own choice of backend per layer (``nn.Conv3d``'s
  call: its slow im2col kernel where a single volume's channels · slices · rows ≤ 20480),
  against which the network's :class:`Conv3d` runs oneDNN for every layer;
* ONNX Runtime (CPU execution provider) on the folded network, if onnxruntime is installed.

The bundled model (64³) gets the last comparison too, in a table of its own.

Reports seconds, GFLOP per pass (counted from the layers) and achieved GFLOP/s against the
compute ceiling: ~160 GFLOP/s, the float32 matrix-product rate of torch on the 2-core AVX2
CPU the results were measured on.

    python benchmarks/bench_forward.py [--size 128] [--threads 2] [--repeats 3]

Writes benchmarks/results/forward.md.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.model.config import NetworkConfig  # noqa: E402
from ProgressiveRegistrationLib.model.modelfile import fold_batchnorm, load_model  # noqa: E402
from ProgressiveRegistrationLib.model.network import Conv3d, UNet  # noqa: E402

CEILING_GFLOPS = 160.0


def count_gflop(net: torch.nn.Module, x: torch.Tensor) -> float:
    """2 × multiply-accumulates of every convolution, from the actual output shapes."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = int(np.prod(module.kernel_size))
        if isinstance(module, torch.nn.ConvTranspose3d):
            total += 2 * inputs[0].numel() * module.out_channels * k
        else:
            total += 2 * output.numel() * module.in_channels * k // module.groups

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.inference_mode():
        net(x)
    for h in handles:
        h.remove()
    return total / 1e9


@contextlib.contextmanager
def torch_backend_rule():
    """Every :class:`Conv3d` calls ``nn.Conv3d``'s forward (torch picks the backend by shape)."""
    own = Conv3d.forward
    Conv3d.forward = torch.nn.Conv3d.forward
    try:
        yield
    finally:
        Conv3d.forward = own


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-channels", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(NetworkConfig(base_channels=args.base_channels)).eval()
    for m in net.modules():  # trained-like BN statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.5, 0.5)
    n = args.size
    x = torch.randn(1, 2, n, n, n)
    gflop = count_gflop(net, x)
    folded = fold_batchnorm(net)
    rows = []

    def eager():
        with torch.no_grad():
            return net(x)

    def fold():
        with torch.inference_mode():
            return folded(x)

    folded_cl = fold_batchnorm(net).to(memory_format=torch.channels_last_3d)
    x_cl = x.to(memory_format=torch.channels_last_3d)

    def fold_cl():
        with torch.inference_mode():
            return folded_cl(x_cl)

    with torch.inference_mode():
        ref = net(x)
        err = float((folded(x) - ref).abs().max())
        err_cl = float((folded_cl(x_cl) - ref).abs().max())
    rows.append(("eager torch (BN eval, no_grad)", timed(eager, args.repeats), 0.0))
    rows.append(("BN folded + inference_mode", timed(fold, args.repeats), err))
    rows.append(("BN folded + inference_mode + channels_last_3d", timed(fold_cl, args.repeats), err_cl))
    with torch_backend_rule(), torch.inference_mode():
        err_rule = float((folded_cl(x_cl) - ref).abs().max())
        rows.append(("the same, torch's backend choice per layer", timed(fold_cl, args.repeats), err_rule))
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "unet.onnx")
            torch.onnx.export(folded, (x,), path, input_names=["x"], output_names=["u"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            xn = x.numpy()
            out = sess.run(None, {"x": xn})[0]
            rows.append((f"ONNX Runtime {ort.__version__} (BN folded)", timed(lambda: sess.run(None, {"x": xn}), args.repeats),
                         float(np.abs(out - ref.numpy()).max())))
    except Exception as err:  # noqa: BLE001 - optional runtime
        print(f"onnxruntime skipped: {err}", file=sys.stderr)

    base = rows[0][1]
    lines = [
        "# Network forward pass (benchmarks/bench_forward.py)",
        "",
        f"Paper-size U-Net (5 levels, {args.base_channels}…{args.base_channels * 16} channels), one {n}³ pair, "
        f"{gflop:.0f} GFLOP per pass, {args.threads} threads, median of {args.repeats}, all rows in one run "
        f"({platform.machine()}, torch {torch.__version__}). Ceiling: {CEILING_GFLOPS:.0f} GFLOP/s "
        "(torch's float32 matrix product on these cores).",
        "",
        "| variant | seconds | GFLOP/s | % of ceiling | speed-up vs eager | max abs diff vs eager (voxels) |",
        "|---|---|---|---|---|---|",
    ]
    for name, sec, diff in rows:
        lines.append(f"| {name} | {sec:.2f} | {gflop / sec:.0f} | {100 * gflop / sec / CEILING_GFLOPS:.0f} % | "
                     f"{base / sec:.2f}× | {diff:.1e} |")
    # The bundled model as ``progreg register`` runs it (load_model: folded, channels_last_3d).
    model = load_model()
    xb = torch.randn(1, 2, model.size, model.size, model.size).contiguous(memory_format=torch.channels_last_3d)
    bundled_gflop = count_gflop(model.net, xb)

    def bundled():
        with torch.inference_mode():
            return model.net(xb)

    with torch_backend_rule():
        rule_out = bundled()
        rule = timed(bundled, args.repeats)
    out = bundled()
    ours = timed(bundled, args.repeats)
    lines += ["", f"The bundled model ({model.net.levels} levels, {model.net.channels[-1]}…{model.net.channels[0]} "
                  f"channels, {model.size}³, {bundled_gflop:.1f} GFLOP per pass; `progreg register` runs two passes), "
                  "same run:", "",
              "| convolutions | seconds per pass | GFLOP/s | speed-up | max abs diff (voxels) |", "|---|---|---|---|---|",
              f"| torch's backend choice per layer | {rule:.3f} | {bundled_gflop / rule:.0f} | 1.00× | |",
              f"| oneDNN for every layer (`network.Conv3d`) | {ours:.3f} | {bundled_gflop / ours:.0f} | "
              f"{rule / ours:.2f}× | {float((out - rule_out).abs().max()):.1e} |"]
    lines += ["", f"Command: `python benchmarks/bench_forward.py --size {n} --threads {args.threads} "
                  f"--repeats {args.repeats}`"]
    publish(lines, "forward.md" if n == 128 and args.base_channels == 16 else f"forward_{n}_{args.base_channels}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
