"""Training cost: seconds per iteration per active level, in the default and the channels-last
3D memory layout (``train.channels_last``), and the progressive schedule's total cost against
the baseline's for the same number of iterations.

One training iteration = forward, masked L2 loss, backward, SGD step, batch 1, at the
resolution of the finest active level (the progressive network computes nothing finer).
Data generation is excluded (a DataLoader worker makes pairs in parallel).

    python benchmarks/bench_training.py [--sizes 64 128] [--threads 2] [--repeats 2] [--levels 5] [--base-channels 16]

Writes benchmarks/results/training.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ProgressiveRegistration"))

from results_table import publish  # noqa: E402

from ProgressiveRegistrationLib.core.metrics import masked_l2  # noqa: E402
from ProgressiveRegistrationLib.model import schedule  # noqa: E402
from ProgressiveRegistrationLib.model.config import NetworkConfig  # noqa: E402
from ProgressiveRegistrationLib.model.network import ProgressiveUNet  # noqa: E402

LAYOUTS = {"default": torch.contiguous_format, "channels-last": torch.channels_last_3d}


def iteration_seconds(net, optim, n: int, alpha, repeats: int, memory_format=torch.contiguous_format) -> float:
    f = schedule.finest_active(np.asarray(alpha))
    side = n // 2 ** (net.levels - 1 - f)
    x = torch.randn(1, 2, side, side, side).contiguous(memory_format=memory_format)
    target = torch.randn(1, 3, side, side, side)
    mask = torch.ones(1, side, side, side)

    def step():
        loss = masked_l2(net(x, alpha), target, mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--delta", type=int, default=2000)
    ap.add_argument("--Delta", type=int, default=6000)
    ap.add_argument("--iterations", type=int, default=30000)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--base-channels", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels, base = args.levels, args.base_channels
    widths = f"{base}…{base * 2 ** (levels - 1)} channels"
    lines = [
        "# Training iteration cost (benchmarks/bench_training.py)",
        "",
        f"{'Paper-size network' if (levels, base) == (5, 16) else 'Network'} ({levels} levels, {widths}), batch 1, "
        f"SGD, {args.threads} threads, median of {args.repeats}, all rows in one run ({platform.machine()}, "
        f"torch {torch.__version__}); the two memory layouts alternate row by row, each with its own copy of "
        "the network. A transition row has two levels active (computed at the finer one's resolution).",
        "",
        "| grid N | active level(s) | resolution | s / it., default | s / it., channels-last | default / channels-last |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for n in args.sizes:
        nets = {}
        for name, memory_format in LAYOUTS.items():
            torch.manual_seed(0)
            net = ProgressiveUNet(NetworkConfig(levels=levels, base_channels=base)).to(memory_format=memory_format)
            nets[name] = (net, torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.5), memory_format)

        def row(alpha, n=n, nets=nets):
            return {name: iteration_seconds(net, optim, n, alpha, args.repeats, mf) for name, (net, optim, mf) in nets.items()}

        single, transition = {}, {}
        for level in range(levels):
            side = n // 2 ** (levels - 1 - level)
            alpha = [0.0] * levels
            alpha[level] = 1.0
            single[level] = row(alpha)
            rows = [(str(level), single[level])]
            if level > 0:
                alpha = [0.0] * levels
                alpha[level - 1], alpha[level] = 0.5, 0.5
                transition[level] = row(alpha)
                rows.append((f"{level - 1}+{level}", transition[level]))
            for active, t in rows:
                lines.append(f"| {n} | {active} | {side}³ | {t['default']:.3f} | {t['channels-last']:.3f} | "
                             f"{t['default'] / t['channels-last']:.2f} |")
        # Cost of the whole schedule: every iteration priced by what it computes.
        for layout in LAYOUTS:
            total = 0.0
            for t in range(args.iterations):
                a = schedule.alphas(t, levels, args.delta, args.Delta)
                f = schedule.finest_active(a)
                total += (transition[f] if (f > 0 and a[f - 1] > 0) else single[f])[layout]
            summary.append((n, layout, total, args.iterations * single[levels - 1][layout]))
    lines += ["", f"Whole schedule (δ = {args.delta}, Δ = {args.Delta}, {args.iterations} iterations; progressive "
                  "network only, the baseline trained separately):", "",
              "| grid N | layout | progressive (h) | baseline (h) | progressive / baseline |", "|---|---|---|---|---|"]
    for n, layout, total, baseline in summary:
        lines.append(f"| {n} | {layout} | {total / 3600:.2f} | {baseline / 3600:.2f} | {total / baseline:.2f} |")
    lines += ["", f"Command: `python benchmarks/bench_training.py --sizes {' '.join(map(str, args.sizes))} "
                  f"--threads {args.threads} --repeats {args.repeats} --levels {levels} --base-channels {base} "
                  f"--delta {args.delta} --Delta {args.Delta} --iterations {args.iterations}`"]
    publish(lines, "training.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
