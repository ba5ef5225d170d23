"""Training cost: seconds per iteration per active level, and the progressive schedule's
total cost against the baseline's for the same number of iterations.

One training iteration = forward, masked L2 loss, backward, SGD step, batch 1, at the
resolution of the finest active level (the progressive network computes nothing finer).
Data generation is excluded (a DataLoader worker makes pairs in parallel).

    python benchmarks/bench_training.py [--sizes 64 128] [--threads 2] [--repeats 2]

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

from ProgressiveRegistrationLib import schedule  # noqa: E402
from ProgressiveRegistrationLib.config import NetworkConfig  # noqa: E402
from ProgressiveRegistrationLib.network import ProgressiveUNet  # noqa: E402
from ProgressiveRegistrationLib.training import masked_l2  # noqa: E402


def iteration_seconds(net, optim, n: int, alpha, repeats: int) -> float:
    f = schedule.finest_active(np.asarray(alpha))
    side = n // 2 ** (net.levels - 1 - f)
    x = torch.randn(1, 2, side, side, side)
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels = 5
    lines = [
        "# Training iteration cost (benchmarks/bench_training.py)",
        "",
        f"Paper-size network (5 levels, 16…256 channels), batch 1, SGD, {args.threads} threads, median of "
        f"{args.repeats}, all rows in one run ({platform.machine()}, torch {torch.__version__}). "
        "A transition row has two levels active (computed at the finer one's resolution).",
        "",
        "| grid N | active level(s) | resolution | seconds / iteration |",
        "|---|---|---|---|",
    ]
    summary = []
    for n in args.sizes:
        net = ProgressiveUNet(NetworkConfig(levels=levels))
        optim = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.5)
        single, transition = {}, {}
        for level in range(levels):
            alpha = [0.0] * levels
            alpha[level] = 1.0
            single[level] = iteration_seconds(net, optim, n, alpha, args.repeats)
            side = n // 2 ** (levels - 1 - level)
            lines.append(f"| {n} | {level} | {side}³ | {single[level]:.3f} |")
            if level > 0:
                alpha = [0.0] * levels
                alpha[level - 1], alpha[level] = 0.5, 0.5
                transition[level] = iteration_seconds(net, optim, n, alpha, args.repeats)
                lines.append(f"| {n} | {level - 1}+{level} | {side}³ | {transition[level]:.3f} |")
        # Cost of the whole schedule: every iteration priced by what it computes.
        total = 0.0
        for t in range(args.iterations):
            a = schedule.alphas(t, levels, args.delta, args.Delta)
            f = schedule.finest_active(a)
            total += transition[f] if (f > 0 and a[f - 1] > 0) else single[f]
        baseline = args.iterations * single[levels - 1]
        summary.append((n, total, baseline))
    lines += ["", f"Whole schedule (δ = {args.delta}, Δ = {args.Delta}, {args.iterations} iterations; progressive "
                  "network only, the baseline trained separately):", "",
              "| grid N | progressive (h) | baseline (h) | progressive / baseline |", "|---|---|---|---|"]
    for n, total, baseline in summary:
        lines.append(f"| {n} | {total / 3600:.2f} | {baseline / 3600:.2f} | {total / baseline:.2f} |")
    lines += ["", f"Command: `python benchmarks/bench_training.py --sizes {' '.join(map(str, args.sizes))} "
                  f"--threads {args.threads} --repeats {args.repeats}`"]
    publish(lines, "training.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
